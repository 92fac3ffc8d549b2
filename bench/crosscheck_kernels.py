"""Native kernel against the Numba kernel, bit for bit, on millions of elements per case.

    python bench/crosscheck_kernels.py [--elements 2097152] [--seed 11]

The suite checks every backend against an exact rational oracle on thousands of elements; this
is the long version, too slow for the suite: all 27 input/output dtype combinations x three kinds
of data (checkpoint-like, wide exponent range, arbitrary bit patterns including inf, NaN and
subnormals) x eleven α, 2M elements each. The Numba kernel shares no code with the C++ one, so
any difference is a bug in one of them; a difference is printed with its inputs (check them
against tests/kernels/oracle.py). Exit status 1 if any case differs.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import ml_dtypes
import numpy as np

from expo_stream.kernels import load_backend

DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
UINT = {2: np.uint16, 4: np.uint32}
ALPHAS = [0.3, 0.1, 0.7, 1.3, -0.3, 8.0, 3e5, 1e-7, 0.123456789, 2.5, 0.5]


def inputs(kind: str, dn: str, sn: str, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    if kind == "bits":
        def raw(name):
            t = np.dtype(DTYPES[name])
            top = 2 ** (8 * t.itemsize)
            return rng.integers(0, top, n, dtype=np.uint64).astype(UINT[t.itemsize]).view(t)
        return raw(dn), raw(sn)
    update = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    if kind == "checkpoint":
        base = (rng.standard_normal(n) * 0.05).astype(np.float32)
        return (base + update).astype(DTYPES[dn]), base.astype(DTYPES[sn])
    wide = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(np.float32)
    with np.errstate(over="ignore"):  # F16 overflows to inf, which is part of the test
        return (wide * (1 + update)).astype(DTYPES[dn]), wide.astype(DTYPES[sn])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=2**21)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    native, numba = load_backend("native"), load_backend("numba")
    rng = np.random.default_rng(args.seed)
    cases = differing = 0
    t0 = time.perf_counter()
    for dn, sn, on in itertools.product(DTYPES, DTYPES, DTYPES):
        for kind in ("checkpoint", "wide", "bits"):
            d, s = inputs(kind, dn, sn, args.elements, rng)
            for alpha in ALPHAS:
                a, b = np.empty(d.size, DTYPES[on]), np.empty(d.size, DTYPES[on])
                native(d, s, alpha, a)
                numba(d, s, alpha, b)
                u = UINT[a.dtype.itemsize]
                bad = np.nonzero(a.view(u) != b.view(u))[0]
                cases += 1
                if bad.size:
                    differing += 1
                    i = bad[0]
                    print(f"DIFF {dn} {sn} -> {on} {kind} alpha={alpha}: {bad.size} elements, "
                          f"first d={d[i]!r} s={s[i]!r} native {int(a.view(u)[i]):#x} "
                          f"numba {int(b.view(u)[i]):#x}")
    print(f"{cases} cases x {args.elements:,} elements: {differing} differ "
          f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
