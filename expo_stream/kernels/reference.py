"""NumPy reference of the extrapolation kernel (docs/arithmetic.md).

Written for clarity over speed: whole-array NumPy operations, the grid arithmetic with
``frexp``/``ldexp``/``floor`` and encoding through NumPy's own exact casts. The Numba and C++
kernels compute the same exact decision with bit operations and are checked against this module
and against a rational oracle bit for bit.
"""

from __future__ import annotations

import numpy as np

from .targets import TARGETS, Target

_SPLITTER = 134217729.0  # 2**27 + 1, Veltkamp's constant for binary64


def two_sum(a, b):
    """Knuth's TwoSum: ``a + b == s + e`` exactly, ``s = fl(a + b)``."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _split(a):
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_product(a, b):
    """Dekker's TwoProduct: ``a * b == p + e`` exactly, ``p = fl(a * b)`` (no FMA needed)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def grow_expansion(expansion: list, b) -> list:
    """Shewchuk's Grow-Expansion: a non-overlapping expansion (smallest first) plus ``b``."""
    out = []
    q = b
    for component in expansion:
        q, h = two_sum(q, component)
        out.append(h)
    out.append(q)
    return out


def _sign_of_largest_nonzero(expansion: list):
    sign = np.zeros_like(expansion[0])
    for component in expansion:  # smallest first: the last non-zero one wins
        sign = np.where(component != 0, np.sign(component), sign)
    return sign


def _encode(magnitude, negative, target: Target):
    """Bits of ``±magnitude`` in the target dtype; ``magnitude`` is exactly representable or inf."""
    bits = magnitude.astype(np.float32)  # exact: the value is representable in the target
    if target.name == "F32":
        raw = bits.view(np.uint32)
    elif target.name == "BF16":
        raw = (bits.view(np.uint32) >> 16).astype(np.uint16)
    else:
        raw = bits.astype(np.float16).view(np.uint16)
    sign_bit = np.asarray(1 << (target.bits - 1), dtype=raw.dtype)
    return np.where(negative, raw | sign_bit, raw).astype(raw.dtype)


def extrapolate(dpo: np.ndarray, sft: np.ndarray, alpha: float, out: np.ndarray) -> None:
    """Write ``RN_t(d + alpha*(d - s))`` into ``out`` (1-D arrays; α ≠ 0 within contract C6)."""
    target = TARGETS[out.dtype.name]
    with np.errstate(all="ignore"):
        d_all = dpo.astype(np.float64)
        s_all = sft.astype(np.float64)
        finite = np.isfinite(d_all) & np.isfinite(s_all)
        d = np.where(finite, d_all, 0.0)
        s = np.where(finite, s_all, 0.0)

        delta_hi, delta_lo = two_sum(d, -s)
        p_hi, p_lo = two_product(alpha, delta_hi)
        q_hi, q_lo = two_product(alpha, delta_lo)
        expansion = [q_lo]
        for term in (q_hi, p_lo, p_hi, d):
            expansion = grow_expansion(expansion, term)
        approx = expansion[0]
        for component in expansion[1:]:
            approx = approx + component

        # The output grid cell around |approx|: lower edge `low`, quantum 2**k, midpoint `mid`.
        magnitude = np.abs(approx)
        _, exponent = np.frexp(magnitude)  # magnitude = f * 2**exponent, f in [0.5, 1)
        k = np.maximum(exponent - 1, target.emin) - (target.precision - 1)
        steps = np.floor(np.ldexp(magnitude, -k))
        low = np.ldexp(steps, k)
        mid = low + np.ldexp(1.0, k - 1)

        negative = approx < 0
        side = np.where(negative, -1.0, 1.0)
        # Exact sign of |x| - mid, from the expansion of x - side*mid.
        above = side * _sign_of_largest_nonzero(grow_expansion(expansion, -side * mid))
        odd = np.fmod(steps, 2.0) == 1.0
        round_up = (above > 0) | ((above == 0) & odd)
        result = low + np.where(round_up, np.ldexp(1.0, k), 0.0)
        result = np.where(result >= target.overflow, np.inf, result)

        # C5: an exact zero keeps IEEE's sign only when d itself is a zero.
        ieee = d_all + alpha * (d_all - s_all)
        exact_zero = approx == 0
        negative = np.where(exact_zero, (d_all == 0) & np.signbit(ieee), negative)

        # C4: non-finite inputs follow IEEE binary64 evaluation.
        result = np.where(finite, result, np.abs(ieee))
        negative = np.where(finite, negative, np.signbit(ieee))
        bits = _encode(result, negative, target)
        bits = np.where(np.isnan(result), target.nan_bits, bits).astype(bits.dtype)
    out.view(bits.dtype)[...] = bits
