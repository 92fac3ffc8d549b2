"""Numba kernel: the reference algorithm (docs/arithmetic.md) over raw bits.

It mirrors the C++ kernel (``csrc/extrapolate_simd.h``). Per block of 2048 elements: a first
stage that LLVM vectorises -- in float32 where inputs and output are BF16/F16 (the C++ kernel's
stage 1: exact TwoSum/FMA errors bound x - r, and both ends of the error interval must round
alike), otherwise in float64 (decode the stored bits, r = fl(d + fl(alpha*fl(d - s))), round r,
and a proof per lane that x rounds the same way) -- a second vectorised stage on the few lanes
next to a midpoint that the first cannot settle, and the scalar exact path (error-free
transformations, Grow-Expansion, the exact midpoint decision) for what is left. Compiled with ``nogil=True`` so
the executor's threads run it in parallel.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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


# ---- the vectorised stages -------------------------------------------------------------------
#
# LLVM vectorises a loop only if its body is straight-line code, so the stages below decode,
# compute and encode with bit operations and selects, never a call or a branch. Numba has no
# scalar bit cast, fused multiply-add or trailing-zero count; these intrinsics are LLVM's own.


@intrinsic
def _float_from_bits(typingctx, x):
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _bits_from_float(typingctx, x):
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a*b + c rounded once (llvm.fma, which unlike llvm.fmuladd is never split in two), so
    fma(a, b, -fl(a*b)) is the exact error of the product wherever that does not underflow."""
    if not (a == b == c == types.float64):
        return None

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f64], ir.FunctionType(f64, [f64] * 3))
        return builder.call(fn, args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def _trailing_zeros(typingctx, x):
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@intrinsic
def _f32_from_bits(typingctx, x):
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return types.float32(types.int64), codegen


@intrinsic
def _bits_from_f32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.int64(types.float32), codegen


@intrinsic
def _fma32(typingctx, a, b, c):
    """float32 a*b + c rounded once (llvm.fma.f32)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32] * 3))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@numba.njit(inline="always")
def _decode_bits(bits, width, precision, rebias):
    """Exact float64 of stored bits, branch-free: exponent and mantissa fields go into the
    double's fields unchanged, one exact multiplication by 2^(1023 - bias) rebiases them (and
    normalises a subnormal input); an all-ones exponent field becomes inf or NaN."""
    shift = 52 - (precision - 1)
    sign = np.int64(1) << (width - 1)
    exp_mask = ((np.int64(1) << (width - precision)) - 1) << (precision - 1)
    body = (bits & ~sign) << shift
    finite = _bits_from_float(_float_from_bits(body) * rebias)
    special = body | (np.int64(0x7FF) << 52)
    v = special if (bits & exp_mask) == exp_mask else finite
    return _float_from_bits(v | ((bits & sign) << (64 - width)))


@numba.njit(inline="always")
def _grid(mag, precision, emin):
    """Branch-free _cell for a non-negative double: exponent e, cell index `steps` (the lower
    edge in quanta 2^k) and cell midpoint (2 steps + 1) 2^(k - 1), exact: it has at most
    precision + 1 significant bits and 2^(k - 1) >= 2^-1013 is a normal double.

    The shift is capped at 63. Where that binds, mag is below 2^-10 q (q the output's smallest
    quantum) and the midpoint returned is 2^(e + 10), between mag and the true q/2: both stages
    then round down to zero, as x does (they decide only where |x| < 2 mag)."""
    abits = _bits_from_float(mag)
    e = (abits >> 52) - 1023
    drop = min(52 - (precision - 1) + max(emin - e, 0), 63)
    steps = ((abits & ((np.int64(1) << 52) - 1)) | (np.int64(1) << 52)) >> drop
    half_quantum = _float_from_bits((e - 52 + drop - 1 + 1023) << 52)
    return e, steps, float(2 * steps + 1) * half_quantum


@numba.njit(inline="always")
def _grid_bits(e, steps, negative, width, precision, emin):
    """Branch-free _encode for a decided lane (other lanes' bits are overwritten): ±steps quanta
    at exponent e. A magnitude of 2^(emax+1) or more gives inf: at e = emax the carry of steps
    into 2^precision makes the field inf's exactly, and any larger e gives at least that."""
    bits = (max(e - emin, 0) << (precision - 1)) + steps
    inf_bits = ((np.int64(1) << (width - precision)) - 1) << (precision - 1)
    return min(bits, inf_bits) | (np.int64(negative) << (width - 1))


# Why a lane the first stage decides is right (the bound of docs/arithmetic.md, for this code).
# d and s are exact binary64 values, u = 2^-53, and every operation stays in binary64's normal
# range: |d - s| <= 2^129, 2^-60 <= |alpha| <= 2^60 (C6), a non-zero |d - s| is at least
# 2^-149, so 2^-209 <= |alpha*delta| <= 2^189 (and a subnormal difference or sum is exact).
#   delta = fl(d - s) = (d - s)(1 + e1), p = fl(alpha*delta) = alpha*delta*(1 + e2),
#   r = fl(d + p) = (d + p)(1 + e3), |e_i| <= u.
# With P = alpha*(d - s) and x = d + P: p = P(1 + t), |t| <= 2u + u^2, so
#   |r - x| <= |r - (d + p)| + |p - P| <= u|r|/(1 - u) + (2u + u^2)|p|/(1 - 2u - u^2)
#            <= B = u(1.001|r| + 2.01|p|).
# The code evaluates T = fl(2^-52 * fl(|r| + fl(3|p|))) >= 2u(1 - 2u)(|r| + 3|p|) and decides
# where T < |r| and ||r| - m| > T, m being the midpoint of |r|'s cell (quantum q) on the output
# grid. m has at most precision + 1 bits, and |r| - m is exact (Sterbenz) except in the cell
# [0, q), where its rounding keeps its sign and errs by a relative 2^-53, far inside the margins
# below (T exceeds 2B by more than 0.1 % in the first case, by a factor near 2 in the second).
#  * If |p| >= |r|/500, T >= 2B; so B <= T/2 < ||r| - m|/2 <= q/4, and B < |r|/2.
#    Otherwise B < 1.01u|r|, which is below T and below q/4 (q > 2^-24|r| in every format).
#  * Hence x != 0 and x has r's sign (a result that rounds to zero keeps the right sign, C5);
#    x is on r's side of m and less than q/4 beyond r's cell; the neighbouring midpoints are at
#    least q/4 away (q/4 below a binade's bottom edge), so x rounds to the end of the cell r
#    rounds to, in the unbounded exponent range. Overflow is monotone in the rounded magnitude:
#    a decided lane whose rounded |r| is 2^(emax+1) or more is inf, and so is x's. Under heavy
#    cancellation (B near |r|) r may be far out of range while x is not: never decided here.
# Exact ties: with an alpha of at most 29 significant bits, where TwoSum says d - s = delta
# exactly and delta has at most 24 significant bits, alpha*delta has at most 53 and p is exact;
# where TwoSum says d + p = r exactly, r = x, and x rounds as r does, ties to even included.
# Half of the checkpoint results at alpha = 0.5 are such ties. Zeros, inf and NaN are never
# decided (zero needs C5's rule, inf and NaN inputs C4's).


@numba.njit(inline="always")
def _first_stage(d, s, alpha, short_alpha, width, precision, emin, emax):
    """(bits, decided) for one lane: r's rounding and whether it is provably x's (see above)."""
    delta = d - s
    p = alpha * delta
    r = d + p
    mag = abs(r)
    e, steps, mid = _grid(mag, precision, emin)
    bound = 2.0**-52 * (mag + 3.0 * abs(p))
    decided = (abs(mag - mid) > bound) & (bound < mag)
    if short_alpha:  # a constant where this is inlined: no branch in the loop
        b1 = delta - d
        err_delta = (d - (delta - b1)) + (-s - b1)
        b2 = r - d
        err_sum = (d - (r - b2)) + (p - b2)
        exact = ((err_delta == 0.0) & (err_sum == 0.0)
                 & ((_bits_from_float(delta) & ((np.int64(1) << 29) - 1)) == 0))
        decided = decided | (exact & (mag != 0.0) & (mag - mag == 0.0))
        up = (mag > mid) | ((mag == mid) & ((steps & 1) == 1))
    else:
        up = mag > mid  # a lane proof 1 decides is never on the midpoint
    return _grid_bits(e, steps + np.int64(up), r < 0.0, width, precision, emin), decided


# The float32 first stage, for BF16/F16 inputs and a BF16/F16 output: the C++ kernel's stage 1
# (csrc/extrapolate_simd.h; the proof is docs/arithmetic.md, "Stage 1"). alpha = a32 + alo
# exactly, A >= |alo| a float32. With delta = d - s exact (TwoSum error 0), e_p = fma(a32,
# delta, -p) and e_r the TwoSum error of r = fl(d + p), x = r + t with |t| <= T; where
# T <= 2^-14|r| and both ends of [fl(r - U), fl(r + U)], U = fl(T + 2^-22|r|), round to the same
# bits, x rounds to them. Where alpha is a float32, e_p = e_r = 0 and |p| >= 2^-101, x = r and
# U = 0 (ties to even from r). Every other lane goes on to the second stage.
_F32_ONE_PLUS = np.float32(1.0 + 2.0**-18)
_F32_FLOOR = np.float32(2.0**-126)
_F32_TWO_M14 = np.float32(2.0**-14)
_F32_TWO_M22 = np.float32(2.0**-22)
_F32_TWO_M101 = np.float32(2.0**-101)
_F32_REBIAS_F16 = np.float32(2.0**112)


@numba.njit(inline="always")
def _decode32(bits, is_bf16):
    """Exact float32 of BF16/F16 bits; F16 inf/NaN become NaN (never decided)."""
    if is_bf16:
        return _f32_from_bits(bits << 16)
    body = _f32_from_bits((bits & 0x7FFF) << 13) * _F32_REBIAS_F16
    v = np.int64(0x7FC00000) if (bits & 0x7C00) == 0x7C00 else _bits_from_f32(body)
    return _f32_from_bits(v | ((bits & 0x8000) << 16))


@numba.njit(inline="always")
def _round32(x, out_bf16):
    """RN-even of a float32 to BF16 or F16 bits, sign included (finite or inf input)."""
    u = _bits_from_f32(x)
    if out_bf16:
        return (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    a = u & 0x7FFFFFFF
    normal = (a - (112 << 23) + 0xFFF + ((a >> 13) & 1)) >> 13
    sub = _bits_from_f32(_f32_from_bits(a) + np.float32(0.5)) - 0x3F000000
    bits = sub if a < 0x38800000 else normal
    bits = 0x7C00 if a >= 0x477FF000 else bits
    return bits | ((u >> 16) & 0x8000)


@numba.njit(inline="always")
def _first_stage32(d, s, a32, bound_alo, alpha_exact, out_bf16):
    """(bits, decided) for one lane of the float32 stage."""
    delta = d - s
    b1 = delta - d
    e_delta = (d - (delta - b1)) - (s + b1)
    p = a32 * delta
    e_p = _fma32(a32, delta, -p)
    r = d + p
    b2 = r - d
    e_r = (d - (r - b2)) + (p - b2)
    mag = abs(r)
    known = abs(e_r) + abs(e_p)
    terms = known if alpha_exact else _fma32(bound_alo, abs(delta), known)
    t = _fma32(terms, _F32_ONE_PLUS, _F32_FLOOR)
    u = _fma32(mag, _F32_TWO_M22, t)
    if alpha_exact:
        if (known == np.float32(0.0)) & (abs(p) >= _F32_TWO_M101):
            u = np.float32(0.0)
    low = _round32(r - u, out_bf16)
    high = _round32(r + u, out_bf16)
    decided = (e_delta == np.float32(0.0)) & (t <= _F32_TWO_M14 * mag) & (low == high)
    return low, decided


@numba.njit(inline="always")
def _first_stage32_loop(dpo, sft, tmp, flags, a32, bound_alo, alpha_exact, d_bf16, s_bf16,
                        out_bf16):
    for i in range(tmp.shape[0]):
        d = _decode32(np.int64(dpo[i]), d_bf16)
        s = _decode32(np.int64(sft[i]), s_bf16)
        bits, ok = _first_stage32(d, s, a32, bound_alo, alpha_exact, out_bf16)
        tmp[i] = bits
        flags[i] = ok


# The second stage, for the lanes the first leaves undecided (at alpha = 0.3 or 0.1 about 5 % of
# checkpoint results: alpha*k lies within alpha's binary error of a half-integer), is the C++
# kernel's second stage, with an FMA for the product's error.
#   TwoSum gives d - s = delta + err_delta exactly; where |p| > 2^-900 (no underflow) or delta
#   = 0, FMA gives alpha*delta = p + e_p exactly; TwoSum gives d + p = r + e_r exactly. Where
#   err_delta = 0, x = r + e_r + e_p. Where |e_r + e_p| < 2^-40|r|, x has r's sign and lies
#   within 2^-40|r| of r while the cell's quantum is at least 2^-24|r|, so x rounds to an end
#   of r's cell: up exactly when |x| - m = (|r| - m) + sign(r)(e_r + e_p) > 0 (or = 0 with an
#   odd lower end). y = fl(m0 + c), with m0 = fl(|r| - m) and c = fl(sign(r)(e_r + e_p)), errs
#   from it by at most 2^-53(2 + 2^-52)(|m0| + |c|): where |y| > 2^-50(|m0| + |c|), y has its
#   sign. Where e_r = e_p = 0 as well, x = r, c = 0 and y = fl(|r| - m) has the exact sign of
#   |x| - m (a rounding keeps a sign and gives 0 only for 0): y = 0 is an exact tie, so ties of
#   alphas too long for the first stage's test are settled here too. Zeros, inf and NaN are not.


@numba.njit(inline="always")
def _second_stage(d, s, alpha, width, precision, emin, emax):
    """(bits, decided) for one lane, by the proof above; straight-line code."""
    delta, err_delta = _two_sum(d, -s)
    p = alpha * delta
    e_p = _fma(alpha, delta, -p)
    r, e_r = _two_sum(d, p)
    mag = abs(r)
    e, steps, mid = _grid(mag, precision, emin)
    total = e_r + e_p
    c = -total if r < 0.0 else total
    m0 = mag - mid
    y = m0 + c
    exact = (e_r == 0.0) & (e_p == 0.0)
    decided = ((err_delta == 0.0) & ((abs(p) > 2.0**-900) | (delta == 0.0))
               & (abs(total) < 2.0**-40 * mag)
               & ((abs(y) > 2.0**-50 * (abs(m0) + abs(c))) | exact)
               & (mag != 0.0) & (mag - mag == 0.0))
    up = (y > 0.0) | (exact & (y == 0.0) & ((steps & 1) == 1))
    return _grid_bits(e, steps + np.int64(up), r < 0.0, width, precision, emin), decided


@numba.njit(inline="always")
def _first_stage_loop(dpo, sft, tmp, flags, alpha, short_alpha, dw, dprec, d_rebias, sw, sprec,
                      s_rebias, ow, oprec, oemin, oemax):
    # Indexes from a range that starts at 0: LLVM then knows them non-negative and drops
    # Numba's wraparound of negative indexes, which would turn every load into a gather.
    for i in range(tmp.shape[0]):
        d = _decode_bits(np.int64(dpo[i]), dw, dprec, d_rebias)
        s = _decode_bits(np.int64(sft[i]), sw, sprec, s_rebias)
        bits, ok = _first_stage(d, s, alpha, short_alpha, ow, oprec, oemin, oemax)
        tmp[i] = bits
        flags[i] = ok


_BLOCK = 2048
_ONES = np.uint64(0x0101010101010101)  # a flag of 1 in each of eight bytes
_GATHER = np.uint64(0x0102040810204080)


@numba.njit(nogil=True, cache=True)
def _extrapolate_bits(dpo, dpo_fmt, sft, sft_fmt, out, out_fmt, alpha, short_alpha, tmp,
                      direct):
    dw, dprec, demin = dpo_fmt
    sw, sprec, semin = sft_fmt
    ow, oprec, oemin, oemax = out_fmt
    d_rebias = math.ldexp(1.0, 1023 - (1 - demin))
    s_rebias = math.ldexp(1.0, 1023 - (1 - semin))
    n = out.shape[0]
    # The float32 stage where every format is 16 bits wide; alpha = a32 + alo, A >= |alo|.
    stage32 = dw == 16 and sw == 16 and ow == 16
    a32 = np.float32(alpha)
    alo = alpha - np.float64(a32)
    bound_alo = np.float32(abs(alo))
    if np.float64(bound_alo) < abs(alo):
        bound_alo = np.nextafter(bound_alo, np.float32(np.inf))
    alpha_exact = alo == 0.0
    flags = np.empty(_BLOCK, np.uint8)
    words = flags.view(np.uint64)
    hard = np.empty(_BLOCK, np.int64)
    hard_d = np.empty(_BLOCK, np.int64)
    hard_s = np.empty(_BLOCK, np.int64)
    near_bits = np.empty(_BLOCK, np.int64)
    near_ok = np.empty(_BLOCK, np.uint8)
    for base in range(0, n, _BLOCK):
        m = min(_BLOCK, n - base)
        at = base if direct else 0  # where this block's lanes are in tmp
        # First stage. It writes to out (direct) or to tmp: with out 16 bytes past dpo modulo
        # 4 KiB (as NumPy's allocations often fall), each store would alias a load a few lanes
        # ahead and stall it (x86 "4K aliasing": 3x slower in bench/numba_speed.py's smaller
        # shape); extrapolate() then places tmp away from the inputs. No count of undecided
        # lanes here: with that reduction LLVM vectorised a similar loop 4 lanes wide, not 16.
        block_d = dpo[base:base + m]
        block_s = sft[base:base + m]
        block_tmp = tmp[at:at + m]
        if stage32:
            if alpha_exact:
                _first_stage32_loop(block_d, block_s, block_tmp, flags, a32, bound_alo, True,
                                    dprec == 8, sprec == 8, oprec == 8)
            else:
                _first_stage32_loop(block_d, block_s, block_tmp, flags, a32, bound_alo, False,
                                    dprec == 8, sprec == 8, oprec == 8)
        elif short_alpha:
            _first_stage_loop(block_d, block_s, block_tmp, flags, alpha, True, dw, dprec,
                              d_rebias, sw, sprec, s_rebias, ow, oprec, oemin, oemax)
        else:
            _first_stage_loop(block_d, block_s, block_tmp, flags, alpha, False, dw, dprec,
                              d_rebias, sw, sprec, s_rebias, ow, oprec, oemin, oemax)
        for i in range(m, (m + 63) // 64 * 64):
            flags[i] = 1
        # Gather the undecided lanes, 64 at a time: eight flag bytes become eight bits by one
        # multiplication (byte i of the word lands on bit 56 + i, no two partial products
        # overlap), and the set bits of the 64-bit mask are visited lowest first.
        count = 0
        for chunk in range(0, m, 64):
            mask = np.uint64(0)
            for k in range(8):
                undecided = ~words[chunk // 8 + k] & _ONES
                mask |= ((undecided * _GATHER) >> np.uint64(56)) << np.uint64(8 * k)
            while mask != 0:
                hard[count] = chunk + np.int64(_trailing_zeros(mask))
                count += 1
                mask &= mask - np.uint64(1)
        # Second stage on them, branch-free again, its verdicts applied after. Their inputs are
        # copied first, so that its loop reads contiguous arrays (no gathers).
        left = 0
        if count:
            for j in range(count):
                hard_d[j] = dpo[base + hard[j]]
                hard_s[j] = sft[base + hard[j]]
            for j in range(count):
                d = _decode_bits(hard_d[j], dw, dprec, d_rebias)
                s = _decode_bits(hard_s[j], sw, sprec, s_rebias)
                bits, ok = _second_stage(d, s, alpha, ow, oprec, oemin, oemax)
                near_bits[j] = bits
                near_ok[j] = ok
            for j in range(count):
                i = hard[j]
                if near_ok[j]:
                    tmp[at + i] = near_bits[j]
                else:
                    hard[left] = i
                    left += 1
        # The exact path for the rest: zeros, cancellations, inf and NaN inputs.
        for j in range(left):
            i = hard[j]
            d = _decode(np.int64(dpo[base + i]), dw, dprec, demin)
            s = _decode(np.int64(sft[base + i]), sw, sprec, semin)
            tmp[at + i] = _extrapolate_one(d, s, alpha, ow, oprec, oemin, oemax)
        # Last, so that an out that is an input (not direct) is written only once the block's
        # inputs have all been read.
        if not direct:
            out[base:base + m] = tmp[:m]


def _fmt(target):
    return (target.bits, target.precision, target.emin, target.emax)


def extrapolate(dpo: np.ndarray, sft: np.ndarray, alpha: float, out: np.ndarray) -> None:
    """Same contract as :func:`expo_stream.kernels.reference.extrapolate`."""
    from .targets import TARGETS

    fd, fs, fo = (TARGETS[a.dtype.name] for a in (dpo, sft, out))
    uint = {16: np.uint16, 32: np.uint32}
    raw_out = out.view(uint[fo.bits])
    # Straight into out, unless its stores would stall the loads (see _store_gaps) or out is an
    # input: the later stages read a block's inputs again after the first stage has run.
    direct = (min(_store_gaps(out.ctypes.data, dpo, sft)) >= _SAFE_GAP
              and not np.may_share_memory(out, dpo) and not np.may_share_memory(out, sft))
    _extrapolate_bits(
        dpo.view(uint[fd.bits]), _fmt(fd)[:3],
        sft.view(uint[fs.bits]), _fmt(fs)[:3],
        raw_out, _fmt(fo),
        float(alpha), _is_short(float(alpha)),
        raw_out if direct else _scratch(uint[fo.bits], dpo, sft, out), direct,
    )


def _is_short(alpha: float) -> bool:
    """At most 29 significant bits: the first stage can prove exact products with it."""
    scaled = math.ldexp(math.frexp(alpha)[0], 29)
    return scaled == math.floor(scaled)


_PAGE = 4096
_SAFE_GAP = 1024


def _store_gaps(at: int, *loaded: np.ndarray) -> list[int]:
    """How far, modulo 4 KiB, a store at `at` lies past the same element of each loaded array. A
    store stalls a later load from an address that matches it in the low 12 bits (x86 "4K
    aliasing"), and the loops here load a few hundred bytes ahead of their stores, so a gap
    below that reach stalls; 1 KiB or more is safe."""
    return [((at - a.ctypes.data) % _PAGE) or _PAGE for a in loaded]


def _scratch(dtype, dpo: np.ndarray, sft: np.ndarray, out: np.ndarray) -> np.ndarray:
    """A block-sized buffer for the first stage's bits, placed modulo 4 KiB away from the
    inputs' loads and from the copy into out (see _extrapolate_bits)."""
    size = _BLOCK * np.dtype(dtype).itemsize
    raw = np.empty(size + _PAGE, np.uint8)
    best, best_gap = 0, -1
    for offset in range(0, _PAGE, 512):
        at = raw.ctypes.data + offset
        gap = min(_store_gaps(at, dpo, sft) + [((out.ctypes.data - at) % _PAGE) or _PAGE])
        if gap > best_gap:
            best, best_gap = offset, gap
    return raw[best:best + size].view(dtype)
