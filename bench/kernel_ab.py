"""Two builds of the native kernel side by side, hot cache, one thread, in one run.

    git worktree add /tmp/kold <old-commit> && (cd /tmp/kold && python setup.py build_ext --inplace)
    python bench/kernel_ab.py --old /tmp/kold --new . [--elements 33554432 --rounds 3]
        [--shape dense] [--level avx2] [--alphas 0.1,0.3]

Each round times every α in a fresh child process per build (PYTHONPATH set to that tree),
alternating old/new so that drift on a shared machine hits both; the best of the rounds counts.
Checkpoint-like BF16 data by default (DPO = SFT + small noise, BF16 out); --shape dense is
bench/kernels.py's dense noise (DPO and SFT independent), its slowest case. --level forces a SIMD
level in both builds (EXPO_STREAM_SIMD). Prints a
Markdown table of output GB/s per core and the new/old ratio, and checks the two builds' bits
are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ALPHAS = [0.3, 0.1, 0.5, 2.5, 15.0]

CHILD = r"""
import hashlib, json, sys, time
import ml_dtypes, numpy as np
from expo_stream.kernels import load_backend, describe_backend
n, alphas, shape = int(sys.argv[1]), [float(a) for a in sys.argv[2].split(",")], sys.argv[3]
rng = np.random.default_rng(0)
if shape == "dense":  # as bench/kernels.py
    dpo = (rng.standard_normal(n) * 0.05).astype(ml_dtypes.bfloat16)
    sft = (rng.standard_normal(n) * 0.05).astype(ml_dtypes.bfloat16)
else:
    base = rng.standard_normal(n, dtype=np.float32) * 0.02
    sft = base.astype(ml_dtypes.bfloat16)
    dpo = (base + rng.standard_normal(n, dtype=np.float32) * 2e-4).astype(ml_dtypes.bfloat16)
out = np.empty(n, ml_dtypes.bfloat16)
kernel = load_backend("native")
result = {"backend": describe_backend("native")}
for a in alphas:
    kernel(dpo[:4096], sft[:4096], a, out[:4096])
    times = []
    for _ in range(3):
        t = time.perf_counter()
        kernel(dpo, sft, a, out)
        times.append(time.perf_counter() - t)
    best = min(times)
    result[str(a)] = {"GBps": n * 2 / best / 1e9,
                      "sha256": hashlib.sha256(out.view(np.uint16).tobytes()).hexdigest()}
print(json.dumps(result))
"""


def measure(tree: Path, n: int, alphas: list, shape: str, level: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    if level:
        env["EXPO_STREAM_SIMD"] = level
    res = subprocess.run([sys.executable, "-c", CHILD, str(n), ",".join(map(str, alphas)), shape],
                         env=env, check=True, capture_output=True, text=True, cwd="/")
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, default=Path("."))
    ap.add_argument("--elements", type=int, default=32 * 2**20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shape", choices=("dpo", "dense"), default="dpo")
    ap.add_argument("--level", choices=("avx512", "avx2", "baseline"))
    ap.add_argument("--alphas", default=",".join(map(str, ALPHAS)))
    args = ap.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    best = {"old": {}, "new": {}}
    for _ in range(args.rounds):
        for label, tree in (("old", args.old), ("new", args.new)):
            got = measure(tree, args.elements, alphas, args.shape, args.level)
            backend = got["backend"]
            for a in alphas:
                prev = best[label].get(a)
                if prev is None or got[str(a)]["GBps"] > prev["GBps"]:
                    best[label][a] = got[str(a)]
    data = "dense-noise" if args.shape == "dense" else "checkpoint-like"
    print(f"{args.elements:,} {data} BF16 elements, BF16 out, best of {args.rounds} "
          f"alternating rounds; old = {args.old}, new = {args.new}; {backend}\n")
    print("| α | old GB/s per core | new GB/s per core | new / old | same bits |")
    print("| --- | --- | --- | --- | --- |")
    for a in alphas:
        o, n = best["old"][a], best["new"][a]
        print(f"| {a:g} | {o['GBps']:.3f} | {n['GBps']:.3f} | {n['GBps'] / o['GBps']:.2f}x | "
              f"{'yes' if o['sha256'] == n['sha256'] else 'NO'} |")


if __name__ == "__main__":
    main()
