"""expo-stream: streaming ExPO model extrapolation, theta = dpo + alpha * (dpo - sft).

The merge path imports neither torch nor transformers.

    >>> import expo_stream
    >>> expo_stream.merge("sft/", "dpo/", "out/", alpha=0.3)  # doctest: +SKIP
"""

from .errors import (
    AlphaOutOfRangeError, BackendUnavailableError, ExpoStreamError, FormatError, OutputError,
    PlanError, UsageError,
)
from .execute.merge import MergeResult, make_options, merge, plan_merge, write_plan
from .kernels import extrapolate
from .version import __version__

__all__ = [
    "merge", "plan_merge", "make_options", "write_plan", "MergeResult", "extrapolate", "__version__",
    "ExpoStreamError", "UsageError", "AlphaOutOfRangeError", "FormatError", "PlanError",
    "BackendUnavailableError", "OutputError",
]
