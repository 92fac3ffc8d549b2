"""Extrapolation kernels on NumPy arrays, under one arithmetic contract (docs/arithmetic.md).

Three backends give identical bits: ``native`` (C++ in csrc/, SIMD, GIL released), ``numba``
(``@njit(nogil=True)``) and ``numpy`` (the reference). ``auto`` takes the first that loads.

Example:
    >>> import numpy as np, ml_dtypes
    >>> d = np.array([1.0, 2.0], ml_dtypes.bfloat16); s = np.array([0.5, 2.0], ml_dtypes.bfloat16)
    >>> extrapolate(d, s, 0.5).astype(float).tolist()
    [1.25, 2.0]
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable

import numpy as np

from ..errors import AlphaOutOfRangeError, BackendUnavailableError
from ..format.dtypes import ALIASES, NUMPY_DTYPES
from .targets import BY_NAME, TARGETS

BACKENDS = ("native", "numba", "numpy")
SIMD_ENV = "EXPO_STREAM_SIMD"  # forces the native kernel's SIMD level (csrc/extrapolate.cpp)
ALPHA_MIN, ALPHA_MAX = 2.0**-60, 2.0**60

Kernel = Callable[[np.ndarray, np.ndarray, float, np.ndarray], None]


@functools.cache
def load_backend(name: str) -> Kernel:
    """The kernel function of backend ``name``; raises BackendUnavailableError if it cannot load."""
    if name == "native":
        try:
            from .. import _native
        except ImportError as exc:
            if os.environ.get(SIMD_ENV):  # the module refused the forced level, with its reason
                raise BackendUnavailableError(str(exc)) from None
            raise BackendUnavailableError(
                f"native kernel not built ({exc}); reinstall with a C++ compiler or use --backend numba"
            ) from None

        def native(dpo, sft, alpha, out):
            _native.extrapolate(
                dpo, TARGETS[dpo.dtype.name].code, sft, TARGETS[sft.dtype.name].code,
                out, TARGETS[out.dtype.name].code, alpha,
            )

        return native
    if name == "numba":
        try:
            from . import numba_impl
        except ImportError as exc:
            raise BackendUnavailableError(f"numba backend unavailable ({exc})") from None
        return numba_impl.extrapolate
    if name == "numpy":
        from . import reference

        return reference.extrapolate
    raise BackendUnavailableError(f"unknown backend {name!r}; choose auto, {', '.join(BACKENDS)}")


def resolve_backend(name: str = "auto") -> str:
    """The backend ``auto`` stands for here (native, then numba, then numpy), or ``name`` checked."""
    if name != "auto":
        load_backend(name)
        return name
    if os.environ.get(SIMD_ENV):  # a forced SIMD level means the native kernel, or an error
        load_backend("native")
        return "native"
    for candidate in BACKENDS:
        try:
            load_backend(candidate)
        except BackendUnavailableError:
            continue
        return candidate
    raise BackendUnavailableError("no kernel backend could be loaded")  # numpy always loads


def describe_backend(name: str) -> str:
    """A one-line description, e.g. ``native (SIMD avx2 of avx512, avx2, baseline)``.

    The native kernel runs the best SIMD level the CPU has unless the environment variable
    ``EXPO_STREAM_SIMD`` (avx512, avx2, baseline) forces one.
    """
    if name == "native":
        from .. import _native

        forced = " forced by EXPO_STREAM_SIMD" if os.environ.get(SIMD_ENV) else ""
        return f"native (SIMD {_native.simd_level()}{forced}; CPU runs {', '.join(_native.simd_levels())})"
    return name


def check_alpha(alpha: float) -> float:
    """``alpha`` as float if the contract covers it (C6), else AlphaOutOfRangeError."""
    alpha = float(alpha)
    if alpha == 0:
        return 0.0
    if not math.isfinite(alpha) or not (ALPHA_MIN <= abs(alpha) <= ALPHA_MAX):
        raise AlphaOutOfRangeError(
            f"alpha {alpha!r} is outside the supported range: 0 or 2**-60 <= |alpha| <= 2**60"
        )
    return alpha


def convert(values: np.ndarray, out: np.ndarray) -> None:
    """Round ``values`` (BF16/F16/F32) once into ``out``'s dtype: C3's α = 0 path.

    Same dtype: a bit copy. Otherwise through float32 (exact for every input format) and one
    round-to-nearest-even cast; NaNs become the canonical NaN (C4).
    """
    if values.dtype == out.dtype:
        out.view(np.uint8)[...] = values.view(np.uint8)
        return
    target = TARGETS[out.dtype.name]
    wide = values.astype(np.float32)
    out[...] = wide.astype(out.dtype)
    nan = np.isnan(wide)
    if nan.any():
        out.view(np.uint16 if target.bits == 16 else np.uint32)[nan] = target.nan_bits


def apply(kernel: Kernel, dpo: np.ndarray, sft: np.ndarray, alpha: float, out: np.ndarray) -> None:
    """One chunk under the contract: α = 0 is C3's conversion of ``dpo``, any other α the kernel
    (``kernel`` from :func:`load_backend`; flat, contiguous, non-overlapping arrays)."""
    if alpha == 0.0:
        convert(dpo, out)
    else:
        kernel(dpo, sft, alpha, out)


def extrapolate(
    dpo: np.ndarray,
    sft: np.ndarray,
    alpha: float,
    *,
    out: np.ndarray | None = None,
    dtype: str | np.dtype | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """``RN_t(dpo + alpha*(dpo - sft))`` element-wise, correctly rounded (docs/arithmetic.md).

    Args:
        dpo, sft: arrays of equal shape, each BF16 (``ml_dtypes.bfloat16``), F16 or F32.
        alpha: the extrapolation coefficient (0, or 2**-60 <= |alpha| <= 2**60).
        out: optional output array (same shape, BF16/F16/F32); allocated if omitted.
        dtype: output dtype when ``out`` is omitted: ``"bf16"``, ``"fp16"``, ``"fp32"``, a
            safetensors name or a NumPy dtype. Default: ``dpo``'s dtype.
        backend: ``"auto"``, ``"native"``, ``"numba"`` or ``"numpy"``.

    Returns:
        ``out``.

    Raises:
        AlphaOutOfRangeError, BackendUnavailableError, TypeError (unsupported dtype or
        non-native byte order), ValueError (shape mismatch). ``out`` may alias or overlap an
        input: the result is then computed aside and copied in.
    """
    alpha = check_alpha(alpha)
    for name, arr in (("dpo", dpo), ("sft", sft), ("out", out)):
        if arr is None:
            continue
        if arr.dtype.name not in TARGETS:
            raise TypeError(f"{name} has dtype {arr.dtype}; kernels take bfloat16, float16, float32")
        if not arr.dtype.isnative:  # '>f4' is named float32 too, but the kernels read native order
            raise TypeError(f"{name} has non-native byte order ({arr.dtype.str}); convert it "
                            f"first, e.g. arr.astype(arr.dtype.newbyteorder('='))")
    if dpo.shape != sft.shape:
        raise ValueError(f"dpo shape {dpo.shape} != sft shape {sft.shape}")
    if out is None:
        out_dtype = dpo.dtype if dtype is None else _as_dtype(dtype)
        out = np.empty(dpo.shape, dtype=out_dtype)
    elif out.shape != dpo.shape or out.dtype.name not in TARGETS:
        raise ValueError(f"out must have shape {dpo.shape} and dtype bfloat16/float16/float32")
    d = np.ascontiguousarray(dpo).reshape(-1)
    s = np.ascontiguousarray(sft).reshape(-1)
    # Results go straight into ``out`` only when it is contiguous and overlaps no input: a kernel
    # may read an element again after writing an earlier one (the native kernel does).
    direct = out.flags.c_contiguous and not (np.may_share_memory(out, d) or np.may_share_memory(out, s))
    flat = out.reshape(-1) if direct else np.empty(out.size, out.dtype)
    apply(load_backend(resolve_backend(backend)), d, s, alpha, flat)
    if not direct:
        out[...] = flat.reshape(out.shape)
    return out


def _as_dtype(dtype: str | np.dtype) -> np.dtype:
    if isinstance(dtype, str):
        name = ALIASES.get(dtype.lower(), dtype.upper())
        if name in BY_NAME:
            return NUMPY_DTYPES[name]
    dt = np.dtype(dtype)
    if dt.name not in TARGETS:
        raise TypeError(f"output dtype {dtype!r} is not one of bf16, fp16, fp32")
    return dt
