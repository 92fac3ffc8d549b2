"""An exact rational oracle for the arithmetic contract (docs/arithmetic.md), one element at a time.

Independent of the kernels: Python's Fraction for the exact value, integer arithmetic for the
rounding, and NumPy's exact casts only to turn an already representable value into bits.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from expo_stream.kernels.targets import BY_NAME

_RAW = {16: np.uint16, 32: np.uint32}


def _floor_log2(x: Fraction) -> int:
    e = x.numerator.bit_length() - x.denominator.bit_length()
    while Fraction(2) ** e > x:
        e -= 1
    while Fraction(2) ** (e + 1) <= x:
        e += 1
    return e


def round_to_bits(x: Fraction, negative_zero: bool, target_name: str) -> int:
    """Bits of RN-even(x) in the target format (C2), with C5's zero sign given by the caller."""
    t = BY_NAME[target_name]
    sign = 1 << (t.bits - 1)
    if x == 0:
        return sign if negative_zero else 0
    negative = x < 0
    mag = -x if negative else x
    k = max(_floor_log2(mag), t.emin) - (t.precision - 1)
    scaled = mag / Fraction(2) ** k
    n = scaled.numerator // scaled.denominator
    rest = scaled - n
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1):
        n += 1
    value = n * Fraction(2) ** k
    if value >= Fraction(2) ** (t.emax + 1):
        bits = t.inf_bits
    else:
        bits = _representable_bits(float(value), target_name)  # float(value) is exact here
    return bits | (sign if negative else 0)


def _representable_bits(v: float, target_name: str) -> int:
    if target_name == "F32":
        return int(np.array(v, np.float32).view(np.uint32))
    if target_name == "F16":
        return int(np.array(v, np.float16).view(np.uint16))
    return int(np.array(v, np.float32).view(np.uint32)) >> 16


def expected_bits(d: float, s: float, alpha: float, target_name: str) -> int:
    """The contract's output bits for one element (d, s already exact Python floats)."""
    t = BY_NAME[target_name]
    if alpha == 0:
        raise ValueError("the oracle covers alpha != 0; C3 is tested separately")
    if not (math.isfinite(d) and math.isfinite(s)):
        ieee = d + alpha * (d - s)
        if math.isnan(ieee):
            return t.nan_bits
        return t.inf_bits | ((1 << (t.bits - 1)) if ieee < 0 else 0)
    x = Fraction(d) + Fraction(alpha) * (Fraction(d) - Fraction(s))
    ieee = d + alpha * (d - s)
    negative_zero = d == 0 and ieee == 0 and math.copysign(1.0, ieee) < 0
    return round_to_bits(x, negative_zero, target_name)


def oracle(dpo: np.ndarray, sft: np.ndarray, alpha: float, target_name: str) -> np.ndarray:
    """Expected raw bits (uint16/uint32) for whole arrays."""
    t = BY_NAME[target_name]
    with np.errstate(invalid="ignore"):  # signalling NaN patterns widen with a warning
        d64 = dpo.astype(np.float64)
        s64 = sft.astype(np.float64)
    return np.array(
        [expected_bits(float(d), float(s), alpha, target_name) for d, s in zip(d64, s64)],
        dtype=_RAW[t.bits],
    )
