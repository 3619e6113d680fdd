"""Route what converters print (C++ logs, tqdm bars, absl) away from the user's terminal.

Converters write straight to file descriptors 1 and 2, so redirecting sys.stdout is not enough.
Third-party noise (torchao's "Failed to load ... _C_mxfp8", ExecuTorch's cpuinfo lines, torch's
_pytree warnings, coremltools' torch-version warning) thus stays off the terminal in normal
runs; `mvdeploy --verbose` (MVDEPLOY_VERBOSE=1) redirects nothing, so all of it shows.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

VERBOSE_ENV = "MVDEPLOY_VERBOSE"


@contextlib.contextmanager
def redirect_native_output(log_path: Path | None = None) -> Iterator[None]:
    """Send fd 1 and 2 to `log_path` (appending), or to /dev/null when None; Python-level
    prints too, wherever sys.stdout points (a progress display's proxy, a test's capture).
    Under --verbose, nothing is redirected."""
    if os.environ.get(VERBOSE_ENV) == "1":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = open(log_path, "a") if log_path else open(os.devnull, "w")  # noqa: SIM115
    try:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
        with contextlib.redirect_stdout(target), contextlib.redirect_stderr(target):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        target.close()


def terminal_stream(fd: int = 2):
    """A text stream on a copy of `fd`, which keeps reaching the terminal during a redirect."""
    return os.fdopen(os.dup(fd), "w", buffering=1)
