"""Writing files so that a reader never sees half of one, and a full disk says so.

Every file mvdeploy writes (manifests, the .pt2, bench results) goes through `write_atomic`:
a temporary name unique to this process, then a rename. A full disk becomes NoSpaceError,
one line naming where, instead of a bare `[Errno 28]` or a C++ abort.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mvdeploy.errors import NoSpaceError

_FULL = (errno.ENOSPC, errno.EDQUOT)
# what native writers put in their logs when a write fails for lack of space
_FULL_WORDS = ("no space left on device", "disk quota exceeded", "enospc")
NEARLY_FULL_BYTES = 1 << 20  # below this free, a failed write is taken for a full disk


def is_no_space(exc: BaseException | None) -> bool:
    """A full disk anywhere in the exception's chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NoSpaceError) or (isinstance(exc, OSError) and exc.errno in _FULL):
            return True
        if any(word in str(exc).lower() for word in _FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def nearly_full(folder: Path, below: int = NEARLY_FULL_BYTES) -> bool:
    """Less than `below` bytes free on the disk holding `folder` (False when unknown)."""
    try:
        return shutil.disk_usage(folder).free < below
    except OSError:
        return False


def log_says_full(log: Path | None) -> bool:
    if log is None or not log.is_file():
        return False
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - 65536))
        tail = handle.read().decode(errors="replace").lower()
    return any(word in tail for word in _FULL_WORDS)


def failed_for_space(exc: BaseException, partial: Path, log: Path | None = None) -> bool:
    """A writer failed or died for lack of space: its error or log says so, or the disk is
    (nearly) full. Ask before removing the partial output, which frees the space again."""
    return is_no_space(exc) or log_says_full(log) or nearly_full(partial)


@contextlib.contextmanager
def full_disk_reported(where: Path) -> Iterator[None]:
    """Turn a failed write for lack of space inside the block into NoSpaceError(where)."""
    try:
        yield
    except NoSpaceError:
        raise
    except OSError as exc:
        if exc.errno in _FULL:
            raise NoSpaceError(where) from exc
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a hidden temporary name in the same folder, then rename over `path`."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial",
                                    dir=path.parent)
    try:
        with full_disk_reported(path.parent), os.fdopen(handle, "wb") as stream:
            stream.write(data.encode() if isinstance(data, str) else data)
        os.chmod(name, 0o666 & ~umask())  # mkstemp makes it private; results should not be
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
