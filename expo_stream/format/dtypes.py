"""Safetensors dtype names and their NumPy equivalents (BF16 through ml_dtypes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

# name -> NumPy dtype. Every dtype the safetensors specification lists that NumPy can hold.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}

ITEMSIZE: dict[str, int] = {name: dt.itemsize for name, dt in NUMPY_DTYPES.items()}

# The float dtypes the kernels extrapolate; anything else is copied from DPO unchanged.
MERGEABLE = ("BF16", "F16", "F32")

# CLI spelling -> safetensors name.
ALIASES = {
    "bf16": "BF16", "bfloat16": "BF16",
    "fp16": "F16", "f16": "F16", "float16": "F16",
    "fp32": "F32", "f32": "F32", "float32": "F32",
}

# safetensors name -> the `torch_dtype` string transformers writes into config.json.
TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def is_float(name: str) -> bool:
    """True for dtypes that hold floating-point numbers (mergeable or not)."""
    return name.startswith("F") or name == "BF16"
