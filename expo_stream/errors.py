"""The exceptions expo-stream raises.

Every error the library raises on purpose derives from :class:`ExpoStreamError`. Messages are one
line, name the file and the tensor where there is one, and say what was expected. The CLI prints
``str(error)`` and exits with ``error.exit_code`` (2 for bad usage, 1 for bad data).
"""

from __future__ import annotations

import errno


class ExpoStreamError(Exception):
    """Root of expo-stream's errors."""

    exit_code = 1


class UsageError(ExpoStreamError):
    """The request itself is wrong: a bad option value, a bad recipe, an output that exists."""

    exit_code = 2


class AlphaOutOfRangeError(UsageError):
    """An α outside the range the arithmetic contract covers (docs/arithmetic.md, C6)."""


class FormatError(ExpoStreamError):
    """A checkpoint file or index is malformed."""


class PlanError(ExpoStreamError):
    """The SFT and DPO checkpoints cannot be merged: names, shapes or dtypes differ."""


class BackendUnavailableError(ExpoStreamError):
    """A kernel backend was requested that cannot be loaded here."""


class OutputError(ExpoStreamError):
    """Writing the output failed (disk full, permissions, ...)."""


class TrainingError(ExpoStreamError):
    """Training cannot go on (out of memory at micro-batch 1, a run that cannot be resumed)."""


def os_problem(exc: OSError) -> str:
    """How a failed file operation reads in a message: ``disk full`` for ENOSPC, else the
    system's words."""
    if exc.errno == errno.ENOSPC:
        return "disk full"
    return exc.strerror or str(exc)
