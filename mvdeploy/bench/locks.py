"""Two benches at once: each --out has one writer, and a bench says when another one is
timing on this machine (both pin their workers to the same first CPUs, so each would time the
other and neither would know).

Advisory locks (fcntl.flock) on files in the temporary folder: the kernel releases them when a
process ends however it ends, so a killed bench never leaves a stale lock behind. The files hold
the owner's pid, for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mvdeploy.errors import ConfigError

MACHINE_LOCK = "mvdeploy-bench-machine.lock"


def _lock_path(name: str) -> Path:
    return Path(tempfile.gettempdir()) / name


def _out_lock_name(out: Path) -> str:
    digest = hashlib.sha256(str(out.expanduser().resolve()).encode()).hexdigest()[:16]
    return f"mvdeploy-bench-out-{digest}.lock"


def _try_lock(path: Path) -> IO[str] | None:
    """The open, locked file; None when another process holds it."""
    handle = open(path, "a+")  # noqa: SIM115 -- held open: the lock lives as long as the file
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def another_bench_running() -> str | None:
    """A warning when another mvdeploy bench is measuring on this machine, else None."""
    path = _lock_path(MACHINE_LOCK)
    handle = _try_lock(path)
    if handle is not None:
        handle.close()
        return None
    return (f"another mvdeploy bench ({_holder(path)}) is measuring on this machine: both pin "
            "to the same CPUs and time each other, so both results are noisy; wait for it")


@contextlib.contextmanager
def bench_locks(out: Path) -> Iterator[None]:
    """Hold `out` for this bench (another one writing there: one line, exit 2) and the machine
    lock, which tells later benches that this one is measuring."""
    out_path = _lock_path(_out_lock_name(out))
    out_handle = _try_lock(out_path)
    if out_handle is None:
        raise ConfigError(f"another mvdeploy bench ({_holder(out_path)}) is writing to {out}: "
                          "wait for it to finish, or choose another --out")
    machine = _try_lock(_lock_path(MACHINE_LOCK))  # None: another one measures too (warned)
    try:
        yield
    finally:
        for handle in (machine, out_handle):
            if handle is not None:
                handle.close()
