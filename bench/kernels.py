"""Hot-cache kernel throughput, one thread: every SIMD level side by side with its ceilings.

    python bench/kernels.py [--elements 1048576] [--runs 5] [--out bench/kernels.json]

BF16 x BF16 -> BF16 at alpha in {0.1, 0.3, 0.5, 2.5, 12, 25} on two data shapes: "dense" (DPO and
SFT independent noise) and "dpo" (DPO = SFT + 0..3 ulps, as in real checkpoints). For each SIMD
level the native kernel runs (``_native.use_simd_level``; EXPO_STREAM_SIMD does the same for a
whole process): the exact kernel, and the plain inexact float32 loop at the same level
(``_native.plain_bf16``, RN(d + fl32(alpha)*(d - s)) with float32 rounding, not the contract) as
the honest ceiling; then the Numba backend and a NumPy copy of the output's size (np.copyto,
GB/s of bytes written). Figures are GB/s of output per core, the median of --runs timings, each
timing long enough (repeated calls) to be over 20 ms; the runs go round all columns and cases in
turn. The inputs stay in memory (hot), the
process runs on one thread. Writes --out (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from expo_stream.errors import BackendUnavailableError
from expo_stream.kernels import load_backend

ALPHAS = [0.1, 0.3, 0.5, 2.5, 12.0, 25.0]
BF16 = np.dtype(ml_dtypes.bfloat16)


def data(shape: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if shape == "dense":
        return ((rng.standard_normal(n) * 0.05).astype(BF16),
                (rng.standard_normal(n) * 0.05).astype(BF16))
    sft = (rng.standard_normal(n) * 0.02).astype(BF16)
    raw = (sft.view(np.uint16).astype(np.int64) + rng.integers(-3, 4, n)).astype(np.uint16)
    return raw.view(BF16), sft


def calibrate(fn) -> int:
    """How many calls make one timing of at least 20 ms."""
    fn()
    t = time.perf_counter()
    fn()
    return max(1, int(0.02 / max(time.perf_counter() - t, 1e-7)) + 1)


def measure(jobs: dict, nbytes: int, runs: int) -> dict:
    """GB/s of output per job: the median of `runs` timings. The rounds interleave the jobs, so
    a burst of load from another process spreads over all of them instead of sinking one. Each
    timing follows one untimed call of its job: without it, whichever job came first in a round
    (after the copy, on other data) ran 15-20 % slow, whatever the job (issue 12's note).
    A job is (SIMD level or None, function): the level is switched before the untimed call, not
    inside the timing (a switch checks CPUID, some 16 µs on a VM, and cost the fastest
    kernels up to 8 %)."""
    from expo_stream import _native

    def ready(level):
        if level is not None:
            _native.use_simd_level(level)

    reps = {}
    for key, (level, fn) in jobs.items():
        ready(level)
        reps[key] = calibrate(fn)
    times: dict = {key: [] for key in jobs}
    for _ in range(runs):
        for key, (level, fn) in jobs.items():
            ready(level)
            fn()
            t = time.perf_counter()
            for _ in range(reps[key]):
                fn()
            times[key].append((time.perf_counter() - t) / reps[key])
    return {key: round(nbytes / statistics.median(v) / 1e9, 3) for key, v in times.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=2**20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("kernels.json"))
    args = ap.parse_args()
    n = args.elements
    out = np.empty(n, BF16)
    rows: dict[str, dict[str, float]] = {}  # column -> {"shape alpha": GB/s}
    inputs = {shape: data(shape, n) for shape in ("dense", "dpo")}
    cases = [(shape, alpha) for shape in inputs for alpha in ALPHAS]

    from expo_stream import _native

    levels = list(_native.simd_levels())
    numba = None
    try:
        numba = load_backend("numba")
    except BackendUnavailableError:
        pass

    def exact(d, s, alpha):
        return lambda: _native.extrapolate(d, 0, s, 0, out, 0, alpha)

    def plain(d, s, alpha):
        return lambda: _native.plain_bf16(d, s, out, alpha)

    src = np.ones(n, BF16)
    jobs = {("numpy copy", ""): (None, lambda: np.copyto(out, src))}
    for shape, alpha in cases:
        d, s = inputs[shape]
        key = f"{shape} {alpha}"
        for level in levels:
            jobs[(f"native {level}", key)] = (level, exact(d, s, alpha))
            jobs[(f"plain float32 {level} (inexact)", key)] = (level, plain(d, s, alpha))
        if numba is not None:
            jobs[("numba", key)] = (None, lambda d=d, s=s, alpha=alpha: numba(d, s, alpha, out))
    before = _native.simd_level()
    figures = measure(jobs, 2 * n, args.runs)
    _native.use_simd_level(before)
    copy = figures.pop(("numpy copy", ""))
    for (column, key), value in figures.items():
        rows.setdefault(column, {})[key] = value

    summary = {name: {"min": min(v.values()), "median": round(statistics.median(v.values()), 3),
                      "max": max(v.values())} for name, v in rows.items()}
    result = {
        "command": "python bench/kernels.py " + " ".join(
            f"--{k} {v}" for k, v in (("elements", n), ("runs", args.runs))),
        "cpu": cpu_model(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
        "elements": n, "dtype": "BF16 x BF16 -> BF16", "unit": "GB/s of output per core, median",
        "numpy_copy_GBps": copy, "figures": rows, "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    names = list(rows)
    print(f"| case | {' | '.join(names)} |")
    print("|---" * (len(names) + 1) + "|")
    for shape, alpha in cases:
        key = f"{shape} {alpha}"
        print(f"| {shape} α={alpha:g} | " + " | ".join(f"{rows[c][key]:.2f}" for c in names) + " |")
    print("| **slowest / median** | " + " | ".join(
        f"**{summary[c]['min']:.2f} / {summary[c]['median']:.2f}**" for c in names) + " |")
    print(f"\nnumpy copy (np.copyto, {2 * n} bytes): {copy:.2f} GB/s written")


if __name__ == "__main__":
    main()
