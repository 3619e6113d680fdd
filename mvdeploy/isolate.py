"""Run a converter in a forked child process, so that its hard death is seen and reported.

Converters are native code (TensorFlow and LiteRT, coremltools' weight writer, ExecuTorch's
emitter, torch's zip writer) and can end the process without a Python exception: an abort
from a C++ `terminate`, `os._exit`, the out-of-memory killer. In the child, that death is an
exit status the parent turns into one line, and the parent removes the partial output.

Fork, not spawn: the child inherits the captured program, calibration images and imported
converters without pickling or re-importing them, and starts in milliseconds. Only the
result (a small dict of facts) and an exception travel back, pickled through a pipe.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ChildCrashed(RuntimeError):
    """The child ended without a result: a native abort, a hard exit or a kill."""

    def __init__(self, exitcode: int, last_line: str = ""):
        self.exitcode = exitcode
        self.last_line = last_line
        super().__init__(f"converter crashed ({describe_exit(exitcode)})"
                         + (f": {last_line}" if last_line else ""))


def describe_exit(exitcode: int) -> str:
    """multiprocessing's exit code (negative: killed by that signal) in a shell's words."""
    if exitcode >= 0:
        return f"exit {exitcode}"
    name = signal.Signals(-exitcode).name
    hint = ", often the out-of-memory killer" if name == "SIGKILL" else ""
    return f"exit {128 - exitcode}, {name}{hint}"


def last_line(log: Path | None) -> str:
    """The last non-empty line a crashed child wrote to its log (C++ aborts say why there)."""
    if log is None or not log.is_file():
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - 8192))
        lines = [s.strip() for s in handle.read().decode(errors="replace").splitlines()]
    return next((s for s in reversed(lines) if s), "")[:300]


def run_isolated(fn: Callable[..., T], *args: Any, log: Path | None = None) -> T:
    """fn(*args) in a forked child; its result, its exception re-raised here, or ChildCrashed.

    Ctrl-C or SIGTERM in the parent kills the child before the interrupt goes on.
    On macOS it runs in this process: forking after Apple's frameworks are loaded (coremltools
    loads Core ML there) is unsafe, which is why Python itself spawns there by default.
    """
    if sys.platform == "darwin":
        return fn(*args)
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    child, scratch = None, None
    try:  # from here on, a signal (SIGTERM, Ctrl-C) still removes the scratch folder
        # the child's temporary files (coremltools writes a package per conversion and removes
        # it in a finaliser that a child's exit never runs) go here, and go when the child does
        scratch = tempfile.mkdtemp(prefix="mvdeploy-convert-")
        child = context.Process(target=_child, args=(writer, fn, args, scratch), daemon=True)
        child.start()
        writer.close()
        try:
            message = reader.recv()
        except EOFError:  # the child died before sending anything
            message = None
        child.join()
    except BaseException:
        if child is not None and child.pid is not None:
            child.kill()
            child.join()
        raise
    finally:
        reader.close()
        writer.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if message is None:
        raise ChildCrashed(child.exitcode, last_line(log))
    kind, payload, description, child_traceback = message
    if kind == "ok":
        return pickle.loads(payload)
    try:
        error = pickle.loads(payload) if payload is not None else None
    except Exception:  # an exception type that cannot be rebuilt here
        error = None
    if not isinstance(error, BaseException):
        error = RuntimeError(description)
    error.add_note(f"raised in the converter process:\n{child_traceback}")
    raise error


# exit handlers run last-registered first, so one registered in the child runs before every
# handler it inherited; keeping a reference keeps the ctypes callback alive
_EXIT_NOW = None


def _exit_before_inherited_handlers() -> None:
    """Native code that ends the child with exit() (LLVM's fatal-error path on a full disk)
    runs the C exit handlers the parent registered, and some cannot run in a fork: the one
    onnxruntime leaves after a validation joins a thread the child does not have, and the export
    waited forever. glibc's on_exit hands the status to a handler registered here, which ends
    the process at once with it, as _exit would."""
    global _EXIT_NOW
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        on_exit = libc.on_exit
    except (OSError, AttributeError):  # not glibc: nothing to register with
        return
    _EXIT_NOW = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)(
        lambda status, _arg: os._exit(status))
    on_exit(_EXIT_NOW, None)


def _child(writer, fn: Callable, args: tuple, scratch: str) -> None:
    _exit_before_inherited_handlers()
    os.environ["TMPDIR"] = tempfile.tempdir = scratch  # Python's tempfile and native code
    # the parent decides what an interrupt means: here it only ends the process
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    faulthandler.disable()  # a test runner's: the parent reports the crash in one line
    torch = sys.modules.get("torch")
    if torch is not None:
        # GNU OpenMP's thread pool does not survive fork: the first parallel region in the
        # child waits forever for the parent's workers. One thread never enters OpenMP.
        torch.set_num_threads(1)
    try:
        message = ("ok", pickle.dumps(fn(*args)), "", "")
    except BaseException as exc:  # every failure goes back to the parent
        try:
            payload = pickle.dumps(exc)
        except Exception:
            payload = None
        first = str(exc).strip().splitlines()
        message = ("error", payload, f"{type(exc).__name__}: {first[0] if first else ''}",
                   traceback.format_exc())
    writer.send(message)
    writer.close()
