"""Numba kernel: the reference algorithm (docs/arithmetic.md) as a scalar loop over raw bits.

It mirrors ``csrc/extrapolate_kernel.inc``: decode the stored bits, the proven fast path, and
where it cannot decide, error-free transformations, Grow-Expansion, the exact midpoint decision
and integer encoding. Compiled with
``nogil=True`` so the executor's threads run it in parallel.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_SPLITTER = 134217729.0  # 2**27 + 1


@numba.njit(inline="always")
def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@numba.njit(inline="always")
def _two_product(a, b):
    p = a * b
    c = _SPLITTER * a
    ah = c - (c - a)
    al = a - ah
    c = _SPLITTER * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@numba.njit(inline="always")
def _decode(bits, width, precision, emin):
    """The exact value of IEEE bits of the given format, as float64."""
    mbits = precision - 1
    emask = (1 << (width - precision)) - 1
    negative = (bits >> (width - 1)) & 1
    e = (bits >> mbits) & emask
    m = bits & ((1 << mbits) - 1)
    if e == emask:
        v = math.inf if m == 0 else math.nan
    elif e == 0:
        v = math.ldexp(float(m), emin - mbits)
    else:
        v = math.ldexp(float(m + (1 << mbits)), e - 1 + emin - mbits)
    return -v if negative else v


@numba.njit(inline="always")
def _encode_special(v, width, precision):
    """Bits of ±inf or NaN (canonical) in the given format."""
    inf_bits = ((1 << (width - precision)) - 1) << (precision - 1)
    if math.isnan(v):
        return inf_bits | (1 << (precision - 2))
    return inf_bits | ((1 << (width - 1)) if v < 0 else 0)


@numba.njit(inline="always")
def _extrapolate_one(d, s, alpha, width, precision, emin, emax):
    sign_bit = 1 << (width - 1)
    if not (math.isfinite(d) and math.isfinite(s)):
        return _encode_special(d + alpha * (d - s), width, precision)
    dh, dl = _two_sum(d, -s)
    ph, pl = _two_product(alpha, dh)
    qh, ql = _two_product(alpha, dl)
    # Grow-Expansion of ql, qh, pl, ph, d: e0..e4, smallest first.
    e1, e0 = _two_sum(qh, ql)
    q, e0 = _two_sum(pl, e0)
    e2, e1 = _two_sum(q, e1)
    q, e0 = _two_sum(ph, e0)
    q, e1 = _two_sum(q, e1)
    e3, e2 = _two_sum(q, e2)
    q, e0 = _two_sum(d, e0)
    q, e1 = _two_sum(q, e1)
    q, e2 = _two_sum(q, e2)
    e4, e3 = _two_sum(q, e3)
    approx = (((e0 + e1) + e2) + e3) + e4
    if approx == 0.0:
        ieee = d + alpha * (d - s)
        return sign_bit if (d == 0.0 and ieee == 0.0 and math.copysign(1.0, ieee) < 0) else 0
    negative = approx < 0.0
    mag = -approx if negative else approx
    e, steps, mid = _cell(mag, precision, emin)
    if e > emax:
        return _encode_special(-math.inf if negative else math.inf, width, precision)
    side = -1.0 if negative else 1.0
    # Grow-Expansion with -side*mid; the largest non-zero component gives sign(x - side*mid).
    q, f0 = _two_sum(-side * mid, e0)
    q, f1 = _two_sum(q, e1)
    q, f2 = _two_sum(q, e2)
    q, f3 = _two_sum(q, e3)
    f5, f4 = _two_sum(q, e4)
    top = 0.0
    for f in (f0, f1, f2, f3, f4, f5):
        if f != 0.0:
            top = f
    above = side * top
    if above > 0.0 or (above == 0.0 and (steps & 1) == 1):
        steps += 1
    return _encode(e, steps, negative, width, precision, emin)


@numba.njit(inline="always")
def _cell(mag, precision, emin):
    """Unbiased exponent, cell index (lower edge / quantum) and cell midpoint of mag > 0."""
    frac, exp2 = math.frexp(mag)
    e = exp2 - 1
    mant = np.int64(math.ldexp(frac, 53))  # mag = mant * 2**(e-52), bit 52 set
    drop = 52 - (precision - 1) + max(0, emin - e)
    steps = mant >> drop if drop < 63 else np.int64(0)
    k = e - 52 + drop
    mid = math.ldexp(float(steps), k) + math.ldexp(1.0, k - 1)
    return e, steps, mid


@numba.njit(inline="always")
def _encode(e, steps, negative, width, precision, emin):
    bits = (max(e - emin, 0) << (precision - 1)) + steps
    inf_bits = ((1 << (width - precision)) - 1) << (precision - 1)
    if bits > inf_bits:
        bits = inf_bits
    return bits | ((1 << (width - 1)) if negative else 0)


@numba.njit(inline="always")
def _fast(d, s, alpha, short_alpha, width, precision, emin, emax):
    """The C++ kernel's fast path (docs/arithmetic.md): bits, or -1 where it cannot decide."""
    delta = d - s
    p = alpha * delta
    r = d + p
    mag = abs(r)
    if mag == 0.0 or not math.isfinite(mag):
        return -1
    e, steps, mid = _cell(mag, precision, emin)
    if e > emax:
        return _encode_special(-math.inf if r < 0.0 else math.inf, width, precision)
    decided = abs(mag - mid) > 2.0**-52 * (mag + 3.0 * abs(p))
    if not decided and short_alpha:
        b1 = delta - d
        err_delta = (d - (delta - b1)) + (-s - b1)
        b2 = r - d
        err_sum = (d - (r - b2)) + (p - b2)
        scaled = math.ldexp(math.frexp(delta)[0], 24)  # integral iff delta has <= 24 bits
        decided = err_delta == 0.0 and err_sum == 0.0 and scaled == math.floor(scaled)
    if not decided:
        return -1
    if mag > mid or (mag == mid and (steps & 1) == 1):
        steps += 1
    return _encode(e, steps, r < 0.0, width, precision, emin)


@numba.njit(nogil=True, cache=True)
def _extrapolate_bits(dpo, dpo_fmt, sft, sft_fmt, out, out_fmt, alpha, short_alpha):
    for i in range(out.shape[0]):
        d = _decode(np.int64(dpo[i]), dpo_fmt[0], dpo_fmt[1], dpo_fmt[2])
        s = _decode(np.int64(sft[i]), sft_fmt[0], sft_fmt[1], sft_fmt[2])
        bits = _fast(d, s, alpha, short_alpha, out_fmt[0], out_fmt[1], out_fmt[2], out_fmt[3])
        if bits < 0:
            bits = _extrapolate_one(d, s, alpha, out_fmt[0], out_fmt[1], out_fmt[2], out_fmt[3])
        out[i] = bits


def _fmt(target):
    return (target.bits, target.precision, target.emin, target.emax)


def extrapolate(dpo: np.ndarray, sft: np.ndarray, alpha: float, out: np.ndarray) -> None:
    """Same contract as :func:`expo_stream.kernels.reference.extrapolate`."""
    from .targets import TARGETS

    fd, fs, fo = (TARGETS[a.dtype.name] for a in (dpo, sft, out))
    uint = {16: np.uint16, 32: np.uint32}
    _extrapolate_bits(
        dpo.view(uint[fd.bits]), _fmt(fd)[:3],
        sft.view(uint[fs.bits]), _fmt(fs)[:3],
        out.view(uint[fo.bits]), _fmt(fo),
        float(alpha), _is_short(float(alpha)),
    )


def _is_short(alpha: float) -> bool:
    """At most 29 significant bits: the fast path can prove exact products with it."""
    scaled = math.ldexp(math.frexp(alpha)[0], 29)
    return scaled == math.floor(scaled)
