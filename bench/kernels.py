"""Hot-cache kernel throughput per backend, one thread, against a plain NumPy copy.

    python bench/kernels.py [--elements 33554432]

Checkpoint-like BF16 data (DPO = SFT + small noise), alpha = 0.3, BF16 out. Reports GB/s of
output written per core, and the copy bandwidth of the same machine in the same run.
"""

from __future__ import annotations

import argparse
import json
import time

import ml_dtypes
import numpy as np

from expo_stream.errors import BackendUnavailableError
from expo_stream.kernels import BACKENDS, describe_backend, load_backend


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=32 * 2**20)
    args = ap.parse_args()
    n = args.elements
    rng = np.random.default_rng(0)
    base = rng.standard_normal(n, dtype=np.float32) * 0.02
    sft = base.astype(ml_dtypes.bfloat16)
    dpo = (base + rng.standard_normal(n, dtype=np.float32) * 2e-4).astype(ml_dtypes.bfloat16)
    out = np.empty(n, ml_dtypes.bfloat16)
    results = {"elements": n}
    src = np.empty(n * 2, np.uint8)
    dst = np.empty_like(src)
    src[:] = 1
    copy_s = best_of(lambda: np.copyto(dst, src), 5)
    results["numpy_copy_GBps"] = round(2 * src.nbytes / copy_s / 1e9, 2)  # read + write
    for name in BACKENDS:
        try:
            kernel = load_backend(name)
        except BackendUnavailableError:
            continue
        m = n if name != "numpy" else n // 16  # the reference is slow; time a slice
        kernel(dpo[:1024], sft[:1024], 0.3, out[:1024])  # compile / warm up
        s = best_of(lambda: kernel(dpo[:m], sft[:m], 0.3, out[:m]), 3 if name != "numpy" else 1)
        results[describe_backend(name)] = {
            "output_GBps_per_core": round(m * 2 / s / 1e9, 3),
            "elements_per_s": round(m / s),
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
