"""The kernel against the arithmetic contract (docs/arithmetic.md, rules C1-C7).

Every backend that loads here is checked bit for bit against the rational oracle in
``oracle.py``, over every combination of DPO, SFT and output dtype.
"""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expo_stream import AlphaOutOfRangeError, extrapolate
from expo_stream.kernels import BACKENDS, load_backend
from expo_stream.kernels.targets import TARGETS

from .backends import AVAILABLE
from .oracle import oracle

DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
          "F32": np.dtype(np.float32)}
RAW = {2: np.uint16, 4: np.uint32}
COMBOS = list(itertools.product(DTYPES, DTYPES, DTYPES))




def test_native_and_numba_backends_load_where_installed():
    # CI builds the extension and installs numba: a silent fallback there would hide a broken
    # build, so the full set is required unless a run opts out explicitly.
    import os

    if os.environ.get("EXPO_ALLOW_MISSING_BACKENDS"):
        pytest.skip("EXPO_ALLOW_MISSING_BACKENDS set")
    assert AVAILABLE == list(BACKENDS)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(RAW[a.dtype.itemsize])


def from_bits(raw: list[int], dtype: np.dtype) -> np.ndarray:
    return np.array(raw, dtype=RAW[dtype.itemsize]).view(dtype)


def raw_values(dtype: np.dtype, size: int):
    """Any bit pattern of the dtype: zeros, subnormals, inf and NaN included."""
    top = 2 ** (8 * dtype.itemsize) - 1
    return st.lists(st.integers(0, top), min_size=size, max_size=size)


def near_values(dtype: np.dtype, size: int):
    """Finite values with DPO close to SFT, as in real checkpoints (where midpoints are common)."""
    return st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=size, max_size=size)


ALPHAS = st.one_of(
    st.sampled_from([0.1, 0.3, 0.5, 2.5, 8.0, 25.0, -1.0, -0.5, 1e-7, 3e5]),
    st.floats(-100, 100, allow_nan=False).filter(lambda a: a == 0 or abs(a) >= 2**-60),
)


def check(d, s, alpha, out_name):
    expected = oracle(d, s, alpha, out_name)
    for backend in AVAILABLE:
        out = extrapolate(d, s, alpha, dtype=DTYPES[out_name], backend=backend)
        got = bits(out)
        bad = np.nonzero(got != expected)[0]
        assert bad.size == 0, (
            f"{backend}: {bad.size} elements differ (C2), first at {bad[0]}: "
            f"d={d[bad[0]]!r} s={s[bad[0]]!r} alpha={alpha!r} "
            f"got {int(got[bad[0]]):#x} expected {int(expected[bad[0]]):#x}"
        )


@pytest.mark.parametrize("dpo_name,sft_name,out_name", COMBOS)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), alpha=ALPHAS)
def test_any_bits_match_the_oracle(dpo_name, sft_name, out_name, data, alpha):
    """C1, C2, C4, C5 on arbitrary bit patterns."""
    if alpha == 0:
        return
    d = from_bits(data.draw(raw_values(DTYPES[dpo_name], 16)), DTYPES[dpo_name])
    s = from_bits(data.draw(raw_values(DTYPES[sft_name], 16)), DTYPES[sft_name])
    check(d, s, alpha, out_name)


@pytest.mark.parametrize("dpo_name,sft_name,out_name", COMBOS)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), alpha=ALPHAS)
def test_checkpoint_like_values_match_the_oracle(dpo_name, sft_name, out_name, data, alpha):
    """C2 where it is hard: DPO = SFT + a small update, decimal α, many midpoints."""
    if alpha == 0:
        return
    base = np.array(data.draw(near_values(DTYPES[sft_name], 24)), np.float32)
    update = np.array(data.draw(near_values(DTYPES[sft_name], 24)), np.float32) * 1e-3
    s = base.astype(DTYPES[sft_name])
    d = (base + update).astype(DTYPES[dpo_name])
    check(d, s, alpha, out_name)


@pytest.mark.parametrize("dpo_name,sft_name,out_name", COMBOS)
def test_many_random_elements_match_the_oracle(dpo_name, sft_name, out_name):
    """A few thousand elements per combination, with the α values the paper publishes."""
    rng = np.random.default_rng(7)
    base = (rng.standard_normal(1500) * 0.05).astype(np.float32)
    s = base.astype(DTYPES[sft_name])
    d = (base + rng.standard_normal(1500).astype(np.float32) * 1e-3).astype(DTYPES[dpo_name])
    for alpha in (0.3, 2.5, 25.0):
        check(d, s, alpha, out_name)


def test_float64_evaluation_misrounds_where_the_kernel_does_not():
    """The reason for the contract: plain float64 misses ~4 % of BF16 results at α = 0.3."""
    rng = np.random.default_rng(0)
    base = (rng.standard_normal(4000) * 0.02).astype(np.float32)
    s = base.astype(ml_dtypes.bfloat16)
    d = (base + rng.standard_normal(4000).astype(np.float32) * 1e-3).astype(ml_dtypes.bfloat16)
    expected = oracle(d, s, 0.3, "BF16")
    d64, s64 = d.astype(np.float64), s.astype(np.float64)
    naive = bits((d64 + 0.3 * (d64 - s64)).astype(ml_dtypes.bfloat16))
    assert 0.02 < np.mean(naive != expected) < 0.08
    assert np.array_equal(bits(extrapolate(d, s, 0.3)), expected)


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("backend", AVAILABLE)
def test_alpha_zero_returns_dpo_bits(name, backend):
    """C3: bit copy, −0 and NaN payloads included, whatever SFT holds."""
    dt = DTYPES[name]
    top = 2 ** (8 * dt.itemsize) - 1
    rng = np.random.default_rng(1)
    raw = rng.integers(0, top, 5000, dtype=np.uint64, endpoint=True).astype(RAW[dt.itemsize])
    d = raw.view(dt)
    s = rng.integers(0, top, 5000, dtype=np.uint64, endpoint=True).astype(RAW[dt.itemsize]).view(dt)
    d[:2] = from_bits([1 << (8 * dt.itemsize - 1), 0], dt)  # -0, +0
    out = extrapolate(d, s, 0.0, backend=backend)
    assert np.array_equal(bits(out), bits(d))


def test_alpha_zero_converts_with_one_rounding():
    d = np.array([1 + 2**-10, np.nan, -0.0, 70000.0], np.float32)
    s = np.zeros(4, np.float32)
    out = extrapolate(d, s, 0.0, dtype="bf16")
    assert bits(out).tolist() == [0x3F80, TARGETS["bfloat16"].nan_bits, 0x8000, 0x4789]


@pytest.mark.parametrize("dpo_name,sft_name", [(a, b) for a, b, _ in COMBOS[::3]])
def test_alpha_minus_one_returns_sft(dpo_name, sft_name):
    """d + (−1)(d − s) = s exactly; rounding s into SFT's own dtype gives s's bits."""
    rng = np.random.default_rng(2)
    s = (rng.standard_normal(3000) * 10).astype(DTYPES[sft_name])
    d = (rng.standard_normal(3000) * 10).astype(DTYPES[dpo_name])
    for backend in AVAILABLE:
        out = extrapolate(d, s, -1.0, dtype=DTYPES[sft_name], backend=backend)
        assert np.array_equal(bits(out), bits(s)), backend


def test_special_values():
    """C4, C5 and overflow, spelled out."""
    f = np.float32
    d = np.array([np.inf, np.inf, np.nan, 1.0, -0.0, -0.0, 1.0, 3e38, 1e-45], f)
    s = np.array([1.0, np.inf, 1.0, np.nan, 0.0, -1.0, 1.0, -3e38, 0.0], f)
    for backend in AVAILABLE:
        out = extrapolate(d, s, 0.5, backend=backend).view(np.uint32).tolist()
        assert out == [
            0x7F800000,  # inf + 0.5*(inf - 1) = inf
            0x7FC00000,  # inf - inf -> canonical NaN
            0x7FC00000, 0x7FC00000,  # NaN in -> NaN out
            0x80000000,  # -0 + 0.5*(-0 - 0) = -0 (C5)
            0x3F000000,  # -0 + 0.5*(0 + 1) = 0.5
            0x3F800000,  # d == s -> d
            0x7F800000,  # overflow -> inf
            0x00000002,  # 1e-45 * 1.5 -> subnormal, rounds to even (2 * 2^-149)
        ], backend


def test_exact_zero_after_cancellation_is_positive():
    """C5: a non-zero d cancelled exactly gives +0."""
    d = np.array([1.0, -2.0], np.float32)
    s = np.array([2.0, -4.0], np.float32)
    for backend in AVAILABLE:
        assert extrapolate(d, s, 1.0, backend=backend).view(np.uint32).tolist() == [0, 0]


@pytest.mark.parametrize("alpha", [1e300, 2.0**-61, float("inf"), float("nan")])
def test_alpha_outside_the_contract_is_refused(alpha):
    d = np.ones(2, np.float32)
    with pytest.raises(AlphaOutOfRangeError):
        extrapolate(d, d, alpha)


def test_backends_agree_on_a_large_array_and_any_split():
    """C7: identical bits across backends and however the array is cut into chunks."""
    rng = np.random.default_rng(3)
    n = 100_003
    s = (rng.standard_normal(n) * 0.02).astype(ml_dtypes.bfloat16)
    d = (s.astype(np.float32) + rng.standard_normal(n).astype(np.float32) * 1e-3).astype(
        ml_dtypes.bfloat16)
    whole = {b: bits(extrapolate(d, s, 0.3, backend=b)) for b in AVAILABLE}
    first = whole[AVAILABLE[0]]
    for b in AVAILABLE:
        assert np.array_equal(whole[b], first), b
    for b in AVAILABLE:
        pieces = [extrapolate(d[i:j], s[i:j], 0.3, backend=b)
                  for i, j in [(0, 1), (1, 8), (8, 777), (777, 50_000), (50_000, n)]]
        assert np.array_equal(bits(np.concatenate(pieces)), first), b


def test_non_contiguous_and_shaped_inputs():
    rng = np.random.default_rng(4)
    d = rng.standard_normal((6, 8)).astype(np.float32)
    s = rng.standard_normal((6, 8)).astype(np.float32)
    out = extrapolate(d[:, ::2], s[:, ::2], 0.3)
    expected = oracle(d[:, ::2].reshape(-1), s[:, ::2].reshape(-1), 0.3, "F32")
    assert out.shape == (6, 4)
    assert np.array_equal(bits(out).reshape(-1), expected)


def test_empty_arrays():
    for backend in AVAILABLE:
        e = np.empty(0, ml_dtypes.bfloat16)
        assert extrapolate(e, e, 0.3, backend=backend).size == 0


@pytest.mark.parametrize("alpha", [0.5, 2.5, 25.0])
def test_short_alpha_exact_ties(alpha):
    """α with few significant bits puts many results exactly on a midpoint (ties to even)."""
    from fractions import Fraction

    rng = np.random.default_rng(5)
    base = (rng.standard_normal(3000) * 0.05).astype(np.float32)
    s = base.astype(ml_dtypes.bfloat16)
    d = (base + rng.standard_normal(3000).astype(np.float32) * 1e-3).astype(ml_dtypes.bfloat16)
    expected = oracle(d, s, alpha, "BF16")
    ties = 0
    for dv, sv in zip(d.astype(float), s.astype(float)):
        x = Fraction(dv) + Fraction(alpha) * (Fraction(dv) - Fraction(sv))
        f = float(x)
        if Fraction(f) == x and float(np.float32(f)) == f:  # exact in float32: look at its bits
            ties += int(np.array(f, np.float32).view(np.uint32)) & 0xFFFF == 0x8000
    assert ties > 100  # the exact-tie shortcut is exercised
    for backend in AVAILABLE:
        assert np.array_equal(bits(extrapolate(d, s, alpha, backend=backend)), expected), backend


@pytest.mark.parametrize("dpo_name,sft_name,d,s", [
    ("BF16", "BF16", 0.00048065185546875, 0.00116729736328125),
    ("F16", "F16", 0.4443359375, 1.0791015625),
])
def test_cancellation_to_a_tiny_result_inside_full_groups(dpo_name, sft_name, d, s):
    """d + α(d − s) cancels to ~1e-20 at α = 0.7 (α's binary error is all that is left), so the
    rounded sum r is up to half its own size away from x. Found by bench/crosscheck_kernels.py: a
    second fast stage that trusted r's cell there got it wrong; a lone element (the tail path) did
    not show it, so the values fill whole groups of eight here."""
    dpo = np.full(64, d, DTYPES[dpo_name])
    sft = np.full(64, s, DTYPES[sft_name])
    for out_name in ("BF16", "F16", "F32"):
        check(dpo, sft, 0.7, out_name)


# Overflow under cancellation: d is huge and d + α(d − s) cancels to a value the output format
# holds, so fl(d + fl(α·fl(d − s))) may land beyond the largest finite output while the exact value
# does not. Such a lane is undecided, and only the exact path may say inf. Only F16 output can be
# reached this way (BF16/F32 inputs reach 2^128, far beyond F16's 65504); for BF16 and F32 output
# the rounded sum exceeds the format only when the exact value does too, and those rows pin that.
OVERFLOW_UNDER_CANCELLATION = [
    # (dpo dtype, dpo value, sft dtype, sft value, alpha, out dtype)
    ("BF16", 2.0**63, "F16", 65472.0, -1.0, "F16"),  # r = 65536 > F16 max; x = 65472 (0x7bfe)
    ("BF16", -2.0**63, "F16", -65472.0, -1.0, "F16"),
    ("F32", 2.0**70, "F16", 65504.0, -1.0, "F16"),
    ("F32", 2.0**100, "F32", 65519.0, -1.0, "F16"),  # just below F16's overflow threshold
    ("F32", -2.0**100, "F32", -65519.0, -1.0, "F16"),
    ("F32", 2.0**100, "F32", 65520.0, -1.0, "F16"),  # at the threshold: inf
    ("BF16", 2.0**80, "F32", 60000.0, -1.0, "F16"),
    ("F32", 2.0**67, "F16", 30000.0, -1.0 + 2.0**-52, "F16"),
    ("F32", 2.0**90, "F16", 65000.0, -1.0 - 2.0**-52, "F16"),
    ("BF16", 2.0**127, "F32", 3.0e38, -1.0, "BF16"),
    ("F32", 3.4e38, "F32", -3.4e38, -1.0, "BF16"),
    ("F32", 3.4e38, "F32", 2.0**-100, -1.0, "BF16"),
    ("BF16", -2.0**127, "BF16", 3.3895e38, -1.0, "BF16"),
    ("F32", 3.4028235e38, "F32", 3.4028233e38, 2.0**60, "F32"),
    ("F32", 3.4028235e38, "F32", 2.0**-120, -1.0, "F32"),
    ("F32", -3.4028235e38, "F32", 3.4028235e38, -1.0, "F32"),
    ("F32", 3.4028235e38, "F32", 3.4028233e38, -1.0 + 2.0**-52, "F32"),
]


@pytest.mark.parametrize("dpo_name,d,sft_name,s,alpha,out_name", OVERFLOW_UNDER_CANCELLATION)
def test_overflow_under_cancellation(dpo_name, d, sft_name, s, alpha, out_name):
    """Inf only where the exact value overflows, not where the rounded sum does (issue: the Numba
    fast path returned inf for 2^63 + (−1)(2^63 − 65472) in F16). Full groups of eight and a
    tail, so vectorised first stages and scalar tails both meet the value."""
    dpo = np.full(19, d, DTYPES[dpo_name])
    sft = np.full(19, s, DTYPES[sft_name])
    check(dpo, sft, alpha, out_name)


# ---- Numba against the NumPy reference, bit for bit ------------------------------------------
#
# The Numba kernel decides most lanes in vectorised first and second stages and sends only the
# rest to the exact path, so every way a lane can fall (decided by the error bound, by the
# exact-tie test of a short α, by the second stage, or left to the exact path) must give the
# reference's bits. Each data set below aims at some of those ways; the largest spans a full
# 2048-element block of the kernel and a partial one.

CROSS_ALPHAS = [0.1, 0.3, 0.5, 2.5, 12.0, 25.0, -1.0, -0.7, 1 / 3, 1 + 2.0**-40,
                2.0**-60, 3e-13, 2.0**60, -(2.0**60), 1e15]
AVAILABLE_FAST = [b for b in AVAILABLE if b != "numpy"]


def _nudge(values: np.ndarray, ulps: np.ndarray) -> np.ndarray:
    """values moved by a whole number of ulps of their own dtype (through their bit patterns;
    finite values not at a zero or the format's end, so the bits stay finite)."""
    raw = bits(values).astype(np.int64) + ulps
    return raw.astype(RAW[values.dtype.itemsize]).view(values.dtype)


def _checkpoint_pairs(dpo_dt, sft_dt, n, rng, scale):
    """What DPO checkpoints look like: most weights equal to SFT's, the rest 1-3 ulps away."""
    base = (rng.standard_normal(n) * scale).astype(np.float32)
    base[np.abs(base) < 1e-30] = 1.0
    s = base.astype(sft_dt)
    ulps = rng.choice([0, 0, 0, 0, 0, 1, -1, 2, -2, 3, -3], n)
    d = _nudge(base.astype(dpo_dt), ulps)
    return d, s


def _dense_noise(dt, n, rng):
    """Any bit pattern: zeros, subnormals, inf and NaN of every payload included."""
    top = 2 ** (8 * dt.itemsize)
    return rng.integers(0, top, n, dtype=np.uint64).astype(RAW[dt.itemsize]).view(dt)


def _wide_finite(dt, n, rng):
    """Finite values over the format's whole range, subnormals included, both signs."""
    raw = bits(_dense_noise(dt, n, rng)).copy()
    exp_bits = {2: 0x7C00 if dt == np.float16 else 0x7F80, 4: 0x7F800000}[dt.itemsize]
    special = (raw & exp_bits) == exp_bits
    raw[special] ^= exp_bits ^ (exp_bits >> 1)  # flip the top exponent bit off: finite
    return raw.view(dt)


def _near_midpoints(dpo_dt, sft_dt, out_dt, alpha, n, rng):
    """d and s chosen so that d + α(d − s) lands within an ulp of s's format of an output
    midpoint (exactly on one where the formats allow)."""
    out = (rng.standard_normal(n) * 0.05).astype(out_dt)
    up = _nudge(out, np.ones(n, np.int64))
    mid = (out.astype(np.float64) + up.astype(np.float64)) / 2
    d = (mid * (1 + rng.standard_normal(n) * 1e-3)).astype(dpo_dt)
    d64 = d.astype(np.float64)
    s = (d64 - (mid - d64) / alpha).astype(sft_dt)
    return d, s


_SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0**-140, -(2.0**-140), 2.0**-20,
            6e-8, 65504.0, -65504.0, 3.0e38, -3.0e38, 2.0**-126, 1e-45]


def _specials(dpo_dt, sft_dt):
    with np.errstate(over="ignore"):  # 3e38 overflows F16 to inf: another special
        grid = np.array(list(itertools.product(_SPECIAL, _SPECIAL)), np.float64)
        return grid[:, 0].astype(dpo_dt), grid[:, 1].astype(sft_dt)


def _cross_sets(dpo_name, sft_name, out_name, alpha, rng):
    dpo_dt, sft_dt, out_dt = DTYPES[dpo_name], DTYPES[sft_name], DTYPES[out_name]
    yield "checkpoint", _checkpoint_pairs(dpo_dt, sft_dt, 2500, rng, 0.02)
    yield "checkpoint-large", _checkpoint_pairs(dpo_dt, sft_dt, 700, rng, 3e3)
    yield "checkpoint-tiny", _checkpoint_pairs(dpo_dt, sft_dt, 700, rng, 1e-6)
    yield "dense-noise", (_dense_noise(dpo_dt, 1200, rng), _dense_noise(sft_dt, 1200, rng))
    yield "wide-finite", (_wide_finite(dpo_dt, 1200, rng), _wide_finite(sft_dt, 1200, rng))
    with np.errstate(all="ignore"):
        yield "near-midpoints", _near_midpoints(dpo_dt, sft_dt, out_dt, alpha, 1500, rng)
    yield "specials", _specials(dpo_dt, sft_dt)


@pytest.mark.skipif(not AVAILABLE_FAST, reason="neither the native nor the numba backend loads")
@pytest.mark.parametrize("dpo_name,sft_name,out_name", COMBOS)
def test_fast_backends_match_the_reference_bit_for_bit(dpo_name, sft_name, out_name):
    """Numba (and native) against the NumPy reference on checkpoint-like data, dense noise, values
    next to midpoints and specials, over an α grid from 2^-60 to 2^60."""
    rng = np.random.default_rng(hash((dpo_name, sft_name, out_name)) % 2**32)
    reference = load_backend("numpy")
    for alpha in CROSS_ALPHAS:
        for label, (d, s) in _cross_sets(dpo_name, sft_name, out_name, alpha, rng):
            expected = np.empty(d.size, DTYPES[out_name])
            reference(d, s, alpha, expected)
            for backend in AVAILABLE_FAST:
                got = extrapolate(d, s, alpha, dtype=DTYPES[out_name], backend=backend)
                bad = np.nonzero(bits(got) != bits(expected))[0]
                assert bad.size == 0, (
                    f"{backend} {label} alpha={alpha!r}: {bad.size} differ, first d={d[bad[0]]!r} "
                    f"s={s[bad[0]]!r} got {int(bits(got)[bad[0]]):#x} "
                    f"expected {int(bits(expected)[bad[0]]):#x}")


def test_reference_agrees_with_the_oracle_on_the_cross_check_sets():
    """The cross-check above trusts the NumPy reference; pin it to the oracle on a sample."""
    rng = np.random.default_rng(11)
    for dpo_name, sft_name, out_name in COMBOS[::4]:
        for alpha in (0.3, 25.0, 2.0**-60):
            for label, (d, s) in _cross_sets(dpo_name, sft_name, out_name, alpha, rng):
                d, s = d[:150], s[:150]
                expected = oracle(d, s, alpha, out_name)
                got = np.empty(d.size, DTYPES[out_name])
                load_backend("numpy")(d, s, alpha, got)
                assert np.array_equal(bits(got), expected), (label, alpha)


@pytest.mark.skipif("numba" not in AVAILABLE, reason="numba backend unavailable")
@pytest.mark.parametrize("out_offset", [0, 16, 600, 2048, 4080])
def test_numba_output_placement(out_offset):
    """The Numba kernel writes straight into out, or through a scratch buffer where out sits just
    past an input modulo 4 KiB (a store-forwarding stall otherwise); both give the same bits."""
    from expo_stream.kernels import numba_impl

    n = 5000  # two full blocks of 2048 and a partial one
    page = 4096
    span = -(-2 * n // page) * page  # whole pages per array: all three start alike mod 4 KiB
    buf = np.zeros(4 * span + 2 * page, np.uint8)
    start = (-buf.ctypes.data) % page
    dpo = buf[start:start + 2 * n].view(ml_dtypes.bfloat16)
    sft = buf[start + span:start + span + 2 * n].view(ml_dtypes.bfloat16)
    at = start + 2 * span + out_offset
    out = buf[at:at + 2 * n].view(ml_dtypes.bfloat16)
    d, s = _checkpoint_pairs(DTYPES["BF16"], DTYPES["BF16"], n, np.random.default_rng(12), 0.02)
    dpo[...] = d
    sft[...] = s
    gaps = numba_impl._store_gaps(out.ctypes.data, dpo, sft)
    assert (min(gaps) >= numba_impl._SAFE_GAP) == (out_offset not in (16, 600))
    expected = np.empty(n, ml_dtypes.bfloat16)
    for alpha in (0.3, 0.5):
        load_backend("numpy")(dpo, sft, alpha, expected)
        numba_impl.extrapolate(dpo, sft, alpha, out)
        assert np.array_equal(bits(out), bits(expected)), alpha


@pytest.mark.skipif("numba" not in AVAILABLE, reason="numba backend unavailable")
def test_numba_in_place():
    """out may be the DPO or the SFT array itself: every input of a block is read before the
    block's output is written (the later stages read the inputs again)."""
    from expo_stream.kernels import numba_impl

    n = 5000
    d, s = _checkpoint_pairs(DTYPES["BF16"], DTYPES["BF16"], n, np.random.default_rng(13), 0.02)
    d[:40] = _specials(DTYPES["BF16"], DTYPES["BF16"])[0][:40]  # some lanes for the exact path
    for alpha in (0.3, 0.5, -1.0):
        expected = np.empty(n, ml_dtypes.bfloat16)
        load_backend("numpy")(d, s, alpha, expected)
        for which in ("dpo", "sft"):
            dd, ss = d.copy(), s.copy()
            numba_impl.extrapolate(dd, ss, alpha, dd if which == "dpo" else ss)
            got = dd if which == "dpo" else ss
            assert np.array_equal(bits(got), bits(expected)), (alpha, which)
