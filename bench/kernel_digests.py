"""sha256 of the native kernel's output on fixed, seeded inputs: a fingerprint of its arithmetic.

    python bench/kernel_digests.py --record        # write bench/kernel_digests.json
    python bench/kernel_digests.py                 # check every SIMD level against it
    python bench/kernel_digests.py --dump DIR      # also write inputs and outputs as raw blobs
    python bench/kernel_digests.py --verify-dir DIR   # check outputs another build wrote

The digests were recorded with the kernel as it stood before the float32 first stage (commit
message of this file's first version); any later kernel must reproduce all of them, at every SIMD
level this CPU runs (docs/arithmetic.md, C7). Cases: all 27 dtype combinations x three data
shapes (dense noise; checkpoint-like DPO = SFT + 1-3 ulps; special values: zeros, inf, NaN,
subnormals, values near overflow, arbitrary bits, exact ties) x 14 values of alpha. Exit status 1
if any digest differs.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
          "F32": np.dtype(np.float32)}
CODES = {"BF16": 0, "F16": 1, "F32": 2}
RAW = {2: np.uint16, 4: np.uint32}
ALPHAS = [0.1, 0.3, 0.5, 2.5, 12.0, 25.0, 1 / 3, 1e-3, 100.0, -0.3, -2.5, 0.7, 1.3, 3e5]
SHAPES = ("dense", "dpo", "special")
N = 100_003  # odd, so every SIMD width has a tail
JSON = Path(__file__).with_name("kernel_digests.json")


def _special_pool(name: str) -> np.ndarray:
    """Values that stress the edges of the format, as the format's own numbers."""
    dt = DTYPES[name]
    fi = ml_dtypes.finfo(dt) if name == "BF16" else np.finfo(dt)
    tiny_sub = float(fi.smallest_subnormal)
    vals = [0.0, -0.0, np.inf, -np.inf, np.nan, float(fi.max), -float(fi.max),
            float(fi.max) / 2, float(fi.smallest_normal), -float(fi.smallest_normal),
            tiny_sub, -tiny_sub, 3 * tiny_sub, float(fi.smallest_normal) - tiny_sub,
            1.0, -1.0, 1.0 + float(fi.eps), 1.0 - float(fi.eps) / 2, 0.5, 2.0, 3.0, 1e-3]
    with np.errstate(over="ignore"):
        return np.array(vals, dtype=np.float64).astype(dt)


def inputs(shape: str, dn: str, sn: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    dd, sd = DTYPES[dn], DTYPES[sn]
    if shape == "dense":
        d = rng.standard_normal(N).astype(np.float32) * 0.05
        s = rng.standard_normal(N).astype(np.float32) * 0.05
        return d.astype(dd), s.astype(sd)
    if shape == "dpo":
        base = (rng.standard_normal(N) * 0.02).astype(np.float32)
        s = base.astype(sd)
        d = base.astype(dd)
        raw = d.view(RAW[dd.itemsize]).copy()
        step = rng.integers(-3, 4, N)
        step[rng.random(N) < 0.3] = 0  # many weights do not move at all
        raw = (raw.astype(np.int64) + step).astype(RAW[dd.itemsize])
        return raw.view(dd), s
    # special: a mix of arbitrary bit patterns, special values and exact-tie pairs
    def raw_bits(dt):
        top = 2 ** (8 * dt.itemsize)
        return rng.integers(0, top, N, dtype=np.uint64).astype(RAW[dt.itemsize]).view(dt)

    d, s = raw_bits(dd), raw_bits(sd)
    pick = rng.random(N)
    pd, ps = _special_pool(dn), _special_pool(sn)
    m = pick < 0.4
    d[m] = pd[rng.integers(0, pd.size, m.sum())]
    m2 = (pick >= 0.2) & (pick < 0.6)
    s[m2] = ps[rng.integers(0, ps.size, m2.sum())]
    # pairs one ulp apart (d = s + ulp): at alpha = 0.5, 2.5 ... the exact result is a midpoint
    m3 = pick >= 0.8
    if dn == sn:
        base = (rng.standard_normal(m3.sum()) * 0.02).astype(dd)
        s[m3] = base
        d[m3] = (base.view(RAW[dd.itemsize]) + 1).view(dd)
    return d, s


def cases():
    rng = np.random.default_rng(20261203)
    for dn, sn, on in itertools.product(DTYPES, DTYPES, DTYPES):
        for shape in SHAPES:
            d, s = inputs(shape, dn, sn, rng)
            yield dn, sn, on, shape, d, s


def run_all(native, dump: Path | None) -> dict[str, str]:
    digests = {}
    for dn, sn, on, shape, d, s in cases():
        stem = f"{dn}-{sn}-{on}-{shape}"
        digests[f"{stem}-inputs"] = hashlib.sha256(d.tobytes() + s.tobytes()).hexdigest()
        if dump:
            (dump / f"{stem}.d").write_bytes(d.tobytes())
            (dump / f"{stem}.s").write_bytes(s.tobytes())
        for alpha in ALPHAS:
            out = np.empty(N, DTYPES[on])
            native.extrapolate(d, CODES[dn], s, CODES[sn], out, CODES[on], alpha)
            key = f"{stem}-a{alpha!r}"
            digests[key] = hashlib.sha256(out.tobytes()).hexdigest()
            if dump:
                (dump / f"{key}.out").write_bytes(out.tobytes())
                with open(dump / "manifest.txt", "a") as f:  # for bench/kernel_driver.cpp
                    f.write(f"{CODES[dn]} {CODES[sn]} {CODES[on]} {alpha.hex()} {N} {stem}.d "
                            f"{stem}.s {key}.out\n")
    return digests


def levels(native) -> list[str]:
    return list(native.simd_levels()) if hasattr(native, "simd_levels") else [native.simd_level()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="write bench/kernel_digests.json")
    ap.add_argument("--dump", type=Path, help="write inputs and outputs as raw blobs here, with "
                    "manifest.txt listing the cases for bench/kernel_driver.cpp")
    ap.add_argument("--verify-dir", type=Path, help="check the *.out files another build wrote "
                    "there (bench/cross_builds.sh) against the recorded digests")
    args = ap.parse_args()
    from expo_stream import _native

    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        (args.dump / "manifest.txt").write_text("")
    if args.record:
        digests = run_all(_native, args.dump)
        JSON.write_text(json.dumps({"elements": N, "alphas": ALPHAS, "digests": digests},
                                   indent=0, sort_keys=True) + "\n")
        print(f"{sum(1 for k in digests if not k.endswith('-inputs'))} digests recorded "
              f"({_native.simd_level()})")
        return
    want = json.loads(JSON.read_text())["digests"]
    if args.verify_dir:
        keys = [k for k in want if not k.endswith("-inputs")]
        bad = [k for k in keys if not (args.verify_dir / f"{k}.out").exists() or hashlib.sha256(
            (args.verify_dir / f"{k}.out").read_bytes()).hexdigest() != want[k]]
        print(f"{args.verify_dir}: {len(keys) - len(bad)}/{len(keys)} digests identical")
        for k in bad:
            print(f"  DIFF {k}")
        sys.exit(1 if bad else 0)
    failed = False
    chosen = os.environ.get("EXPO_STREAM_SIMD")
    for level in ([chosen] if chosen else levels(_native)):
        if hasattr(_native, "use_simd_level"):
            _native.use_simd_level(level)
        got = run_all(_native, args.dump)
        bad_inputs = [k for k in want if k.endswith("-inputs") and got.get(k) != want[k]]
        if bad_inputs:
            sys.exit(f"inputs differ from the recorded ones ({bad_inputs[0]}...): the generator "
                     f"changed, digests cannot be compared")
        keys = [k for k in want if not k.endswith("-inputs")]
        same = sum(got.get(k) == want[k] for k in keys)
        print(f"{_native.simd_level()}: {same}/{len(keys)} digests identical")
        for k in keys:
            if got.get(k) != want[k]:
                print(f"  DIFF {k}")
        failed |= same != len(keys)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
