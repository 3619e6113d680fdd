"""A format for tests, registered by adding one line to the registry: it saves the captured
program (as the .pt2 is saved) under its own suffix and runs it with torch. Nothing else in
mvdeploy knows it exists."""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from mvdeploy.backends import Flag, FormatSpec, Job, Package, Recipe, Runtime, Session
from mvdeploy.errors import ConfigError


@dataclass(frozen=True)
class FakeOptions:
    note: str = "plain"


def _check(options, recipe, ctx) -> None:
    if options.note == "bad":
        raise ConfigError("fake.note must not be 'bad'")


SPEC = FormatSpec(
    name="fake", title="Fake", suffix=".fake", extra="",
    export_needs=(Package("torch", "torch", "the fake converter"),),
    run_needs=(Package("torch", "torch", "the fake runtime"),),
    recipes={"fp32": Recipe("float32", tolerance="fp32")},
    options=FakeOptions, check=_check, default=False,
    runtimes=(Runtime("fakert", ("cpu",)),),
    flags=(Flag(("--fake-note",), "note", help="Fake: a note stored in the file."),),
)


def check_installed() -> None:
    """torch is always there."""


def convert(job: Job) -> dict:
    from mvdeploy.backends.capture import program_bytes

    job.path.write_bytes(program_bytes(job.captured))
    _fail_as_asked(job.options.note)
    return {"note": job.options.note}


def _fail_as_asked(note: str) -> None:
    """How native converters die, after half the output is written: a C++ abort, a hard exit,
    a write that finds the disk full."""
    if note == "abort":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test folder
        print("terminate called after throwing an instance of 'std::runtime_error'", flush=True)
        os.abort()
    if note == "exit":
        print("F0000 converter.cc:1] Check failed: buffer != nullptr", flush=True)
        os._exit(3)
    if note == "full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def load(path: Path, *, threads: int | None = None, accelerator: str = "cpu") -> Session:
    from mvdeploy.backends import get_backend

    return get_backend("torch").load(path, threads=threads)


def describe(path: Path) -> dict:
    from mvdeploy.backends import get_backend

    return get_backend("torch").describe(path)
