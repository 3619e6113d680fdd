"""Typed errors whose message tells the user what to do.

The CLI prints ``str(error)`` as a single line and exits 2, so every message
must name the problem *and* the fix.
"""

from __future__ import annotations


class MvdeployError(Exception):
    """Base class for mistakes a user can fix (bad input, missing extra, bad file)."""


class ConfigError(MvdeployError, ValueError):
    """An option, config key or combination of options is invalid."""


class CheckpointError(MvdeployError):
    """A weight file cannot be read, or does not fit the requested model."""


class MissingDependencyError(MvdeployError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs '{package}', which is not installed: "
            f'run pip install "mvdeploy[{extra}]"'
        )
        self.package = package
        self.extra = extra


class ArtifactError(MvdeployError):
    """A file given as a model artifact cannot be read as one."""


class RuntimeFailure(Exception):
    """Not the user's mistake, yet the run cannot go on (a full disk): one line, exit 1."""


class NoSpaceError(RuntimeFailure):
    def __init__(self, where: object):
        super().__init__(f"no space left on the disk holding {where}: free some space there, "
                         "or write somewhere else")
