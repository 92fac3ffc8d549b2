"""Every SIMD level of the native kernel gives the contract's bits (docs/arithmetic.md, C7).

The kernel is compiled once per level (csrc/extrapolate_<level>.cpp); the module runs the best
one the CPU has, or the one EXPO_STREAM_SIMD names. Here each level this CPU can run is checked
in-process (``_native.use_simd_level``) against the NumPy reference on a grid of dtype
combinations x alpha x data shapes, against the rational oracle on special values, and with
``out`` aliasing an input; the environment variable and its refusals are checked in
subprocesses.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from expo_stream.kernels import reference

from .oracle import oracle

_native = pytest.importorskip("expo_stream._native")

LEVELS = list(_native.simd_levels())
DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
          "F32": np.dtype(np.float32)}
CODES = {"BF16": 0, "F16": 1, "F32": 2}
RAW = {2: np.uint16, 4: np.uint32}
ALPHAS = [0.1, 0.3, 0.5, 2.5, 12.0, 25.0, 1 / 3, 1e-3, -0.3, 100.0]
COMBOS = list(itertools.product(DTYPES, DTYPES, DTYPES))


@pytest.fixture
def level(request):
    before = _native.use_simd_level(request.param)
    yield request.param
    _native.use_simd_level(before)


def run(d: np.ndarray, s: np.ndarray, alpha: float, on: str) -> np.ndarray:
    out = np.empty(d.size, DTYPES[on])
    _native.extrapolate(d, _code(d), s, _code(s), out, CODES[on], alpha)
    return out


def _code(a: np.ndarray) -> int:
    return {"bfloat16": 0, "float16": 1, "float32": 2}[a.dtype.name]


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(RAW[a.dtype.itemsize])


def shapes(dn: str, sn: str, n: int, seed: int):
    """Dense noise, checkpoint-like (DPO = SFT + 0..3 ulps) and arbitrary bit patterns."""
    rng = np.random.default_rng(seed)
    dd, sd = DTYPES[dn], DTYPES[sn]
    yield "dense", (rng.standard_normal(n) * 0.05).astype(dd), (rng.standard_normal(n) * 0.05).astype(sd)
    base = (rng.standard_normal(n) * 0.02).astype(np.float32)
    d = base.astype(dd)
    raw = (bits(d).astype(np.int64) + rng.integers(-3, 4, n)).astype(RAW[dd.itemsize])
    yield "dpo", raw.view(dd), base.astype(sd)

    def any_bits(dt):
        return rng.integers(0, 2 ** (8 * dt.itemsize), n, dtype=np.uint64).astype(RAW[dt.itemsize]).view(dt)

    yield "bits", any_bits(dd), any_bits(sd)


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("dn,sn,on", COMBOS)
def test_level_matches_the_reference(level, dn, sn, on):
    # One block of 1024 and a second of 509 = 15 * 32 + 16 + 13: every level's stage 1 takes
    # every path on it (AVX-512: pairs of registers, one register, then single elements; AVX2:
    # 31 pairs, one register, single elements; baseline: registers, single elements).
    for shape, d, s in shapes(dn, sn, 1024 + 509, seed=9 * CODES[dn] + 3 * CODES[sn] + CODES[on]):
        for alpha in ALPHAS:
            got = run(d, s, alpha, on)
            want = np.empty(d.size, DTYPES[on])
            reference.extrapolate(d, s, alpha, want)
            bad = np.nonzero(bits(got) != bits(want))[0]
            assert bad.size == 0, (
                f"{level} {dn}x{sn}->{on} {shape} alpha={alpha}: {bad.size} elements differ, first "
                f"d={d[bad[0]]!r} s={s[bad[0]]!r} got {int(bits(got)[bad[0]]):#x} "
                f"want {int(bits(want)[bad[0]]):#x}")


def special_values(name: str) -> np.ndarray:
    dt = DTYPES[name]
    fi = ml_dtypes.finfo(dt) if name == "BF16" else np.finfo(dt)
    sub = float(fi.smallest_subnormal)
    one = [0.0, -0.0, np.inf, -np.inf, np.nan, float(fi.max), -float(fi.max), float(fi.max) / 3,
           float(fi.smallest_normal), -float(fi.smallest_normal), sub, -sub, 5 * sub, 1.0, -1.0,
           1.0 + float(fi.eps), 1.0 - float(fi.eps) / 2, 0.75, 3.0, 1e-3, -0.02]
    return np.array(one, dtype=np.float64).astype(dt)


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("dn,sn,on", [("BF16", "BF16", "BF16"), ("F16", "F16", "F16"),
                                      ("BF16", "F16", "F16"), ("F16", "BF16", "BF16"),
                                      ("F32", "F32", "F32"), ("BF16", "BF16", "F32")])
def test_level_matches_the_oracle_on_special_values(level, dn, sn, on):
    with np.errstate(over="ignore"):
        dv, sv = special_values(dn), special_values(sn)
    d = np.repeat(dv, sv.size)
    s = np.tile(sv, dv.size)
    for alpha in (0.3, 0.5, 2.5, 25.0, -1 / 3, 2.0**-60, 2.0**60):
        got = run(d, s, alpha, on)
        want = oracle(d, s, alpha, on)
        bad = np.nonzero(bits(got) != want)[0]
        assert bad.size == 0, (f"{level} {dn}x{sn}->{on} alpha={alpha}: d={d[bad[0]]!r} "
                               f"s={s[bad[0]]!r} got {int(bits(got)[bad[0]]):#x} want {int(want[bad[0]]):#x}")


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("dn", list(DTYPES))
@pytest.mark.parametrize("alias", ["dpo", "sft"])
def test_level_out_may_be_an_input(level, dn, alias):
    # The kernel itself (not only the Python wrapper) must allow out == dpo or out == sft.
    for shape, d, s in shapes(dn, dn, 4099, seed=3):
        for alpha in (0.3, 0.5, 25.0):
            want = run(d, s, alpha, dn)
            d2, s2 = d.copy(), s.copy()
            target = d2 if alias == "dpo" else s2
            _native.extrapolate(d2, _code(d2), s2, _code(s2), target, _code(target), alpha)
            assert np.array_equal(bits(target), bits(want)), f"{level} {shape} alpha={alpha}"


def _python(code: str, simd: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("EXPO_STREAM_SIMD", None)
    if simd is not None:
        env["EXPO_STREAM_SIMD"] = simd
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("simd", LEVELS)
def test_environment_variable_forces_the_level(simd):
    done = _python("from expo_stream import _native; print(_native.simd_level())", simd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == simd
    version = _python("from expo_stream.cli import main; main(['--version'])", simd)
    assert f"SIMD {simd} forced by EXPO_STREAM_SIMD" in version.stdout


def test_default_is_the_best_level():
    done = _python("from expo_stream import _native; print(_native.simd_level())", None)
    assert done.stdout.strip() == LEVELS[0]
    assert LEVELS[-1] == "baseline"


def test_unknown_or_unrunnable_level_is_refused_in_one_line():
    done = _python("import expo_stream._native", "sse9")
    assert "EXPO_STREAM_SIMD=sse9 is not a SIMD level of this build" in done.stderr
    version = _python("from expo_stream.cli import main; main(['--version'])", "sse9")
    assert version.returncode == 1
    assert version.stderr.strip().splitlines() == [
        "Error: EXPO_STREAM_SIMD=sse9 is not a SIMD level of this build (choose "
        + ", ".join(_all_levels()) + ")"]
    missing = [name for name in _all_levels() if name not in LEVELS]
    for name in missing:  # a level this CPU lacks (none on an AVX-512 machine)
        done = _python("import expo_stream._native", name)
        assert f"EXPO_STREAM_SIMD={name}: this CPU cannot run that level" in done.stderr


def _all_levels() -> list[str]:
    import platform

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return ["avx512", "avx2", "baseline"] if x86 else ["baseline"]


def test_use_simd_level_refuses_an_unknown_level():
    with pytest.raises(ValueError, match="not a SIMD level"):
        _native.use_simd_level("sse9")
    assert _native.simd_level() in LEVELS
