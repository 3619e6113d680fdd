"""A format for tests, registered by adding one line to the registry: it saves the captured
program (as the .pt2 is saved) under its own suffix and runs it with torch. Nothing else in
mvdeploy knows it exists."""

from __future__ import annotations

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
    from mvdeploy.capture import save_program

    save_program(job.captured, job.path)
    return {"note": job.options.note}


def load(path: Path, *, threads: int | None = None, accelerator: str = "cpu") -> Session:
    from mvdeploy.backends import get_backend

    return get_backend("torch").load(path, threads=threads)


def describe(path: Path) -> dict:
    from mvdeploy.backends import get_backend

    return get_backend("torch").describe(path)
