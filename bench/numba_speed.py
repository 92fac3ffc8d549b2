"""Numba kernel throughput: hot, one thread, checkpoint-like BF16 x BF16 -> BF16.

    NUMBA_NUM_THREADS=1 python bench/numba_speed.py [--repeats 7] [--json out.json] [--impl FILE]

For each alpha and shape: the median of the repeats of one kernel call on preallocated arrays
(compiled and warmed up first), reported as GB/s of output written. The data imitate a DPO
checkpoint next to its SFT parent: most weights equal, the rest 1-3 BF16 ulps apart (as
bench/kernels.py). Where the native extension loads, the bits are compared with it, so a
faster kernel that changes a single bit shows up here too. ``--impl`` times another copy of
``expo_stream/kernels/numba_impl.py`` instead (an older version, for an A/B on the same machine
in the same minutes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import ml_dtypes
import numpy as np

from expo_stream.errors import BackendUnavailableError
from expo_stream.kernels import load_backend

ALPHAS = (0.1, 0.3, 0.5, 2.5, 12.0, 25.0)
SHAPES = ((4096, 4096), (1024, 1024))


def checkpoint_like(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n, dtype=np.float32) * 0.02
    sft = base.astype(ml_dtypes.bfloat16)
    dpo = (base + rng.standard_normal(n, dtype=np.float32) * 2e-4).astype(ml_dtypes.bfloat16)
    return dpo, sft


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _load_impl(path: str):
    # Inside the kernels package, so that the file's relative imports resolve, and registered,
    # so that Numba's on-disk cache can find the module again when it loads a compiled kernel.
    spec = importlib.util.spec_from_file_location("expo_stream.kernels._bench_impl", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.extrapolate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--impl", help="a numba_impl.py to time instead of the installed one")
    args = ap.parse_args()
    kernel = load_backend("numba") if args.impl is None else _load_impl(args.impl)
    try:
        native = load_backend("native")
    except BackendUnavailableError:
        native = None
    rows = []
    # The load average says how much else ran on the machine: medians of wall time on a shared
    # machine are only as good as that.
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    for shape in SHAPES:
        n = shape[0] * shape[1]
        dpo, sft = checkpoint_like(n)
        out = np.empty(n, ml_dtypes.bfloat16)
        for alpha in ALPHAS:
            kernel(dpo[:4096], sft[:4096], alpha, out[:4096])  # compile and warm up
            kernel(dpo, sft, alpha, out)
            s = median_seconds(lambda: kernel(dpo, sft, alpha, out), args.repeats)
            row = {"shape": list(shape), "alpha": alpha, "GBps": round(out.nbytes / s / 1e9, 3),
                   "ms": round(s * 1e3, 2)}
            if native is not None:
                ref = np.empty_like(out)
                native(dpo, sft, alpha, ref)
                row["same_bits_as_native"] = bool(np.array_equal(out.view(np.uint16),
                                                                  ref.view(np.uint16)))
            rows.append(row)
            print(f"shape {shape[0]}x{shape[1]}  alpha {alpha:>5}  {row['GBps']:6.3f} GB/s  "
                  f"{row['ms']:8.2f} ms" + (f"  same bits as native: {row['same_bits_as_native']}"
                                             if native is not None else ""), flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
