"""Peak memory of a merge whose largest tensor is over 1 GiB (Llama-3-8B's embedding).

    python bench/peak_memory.py --workdir /tmp/expo-peak [--cgroup-mib 512]

Writes an SFT/DPO pair (embedding 128256 x 4096 BF16 = 1.05 GB, lm_head the same, a few
small tensors; SFT in one file, DPO in two shards), then runs ``expo-stream merge`` and
samples its RssAnon every 5 ms. With ``--cgroup-mib`` (root, cgroup v1) the merge also runs
inside a memory cgroup of that limit, page cache included, and must complete there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss import run_sampled  # noqa: E402

from expo_stream.format.checkpoint import shard_name  # noqa: E402
from expo_stream.format.safetensors import encode_header  # noqa: E402

VOCAB, HIDDEN = 128256, 4096


def write_file(path: Path, tensors: list[tuple[str, tuple, callable]]) -> None:
    """Stream tensors into one safetensors file; each is produced row block by row block."""
    with open(path, "wb") as f:
        f.write(encode_header((name, "BF16", shape) for name, shape, _ in tensors))
        for _, shape, make in tensors:
            rows = shape[0]
            for r in range(0, rows, 8192):
                f.write(make(min(8192, rows - r), shape[1:]).tobytes())


def make_pair(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((8192, HIDDEN), dtype=np.float32) * 0.02)

    def sft_rows(n, rest):
        return block[:n].astype(ml_dtypes.bfloat16)

    def dpo_rows(n, rest):
        return (block[:n] + 1e-3).astype(ml_dtypes.bfloat16)

    def small(fn):
        return lambda n, rest: fn(n, (HIDDEN,))[:, : rest[0] if rest else 1].reshape((n,) + tuple(rest))

    big = [("model.embed_tokens.weight", (VOCAB, HIDDEN)), ("lm_head.weight", (VOCAB, HIDDEN))]
    tiny = [(f"model.layers.{i}.input_layernorm.weight", (HIDDEN,)) for i in range(2)]
    sft_dir, dpo_dir = root / "sft", root / "dpo"
    for d in (sft_dir, dpo_dir):
        d.mkdir(exist_ok=True)
    write_file(sft_dir / "model.safetensors",
               [(n, s, sft_rows) for n, s in big] + [(n, s, lambda k, r: np.ones(s, ml_dtypes.bfloat16)) for n, s in tiny])
    shards = [[big[0]], [big[1]] + tiny]
    weight_map = {}
    for i, group in enumerate(shards):
        name = shard_name(i, len(shards))
        write_file(dpo_dir / name, [(n, s, dpo_rows if len(s) == 2 else (lambda k, r, s=s: np.full(s, 1.001, ml_dtypes.bfloat16))) for n, s in group])
        weight_map.update({n: name for n, _ in group})
    (dpo_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sft_dir, dpo_dir


def in_cgroup(cmd: list[str], limit_mib: int) -> list[str]:
    group = Path("/sys/fs/cgroup/memory/expo-bench")
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(limit_mib * 2**20))
    quoted = " ".join(f"'{c}'" for c in cmd)
    return ["sh", "-c", f"echo $$ > {group}/cgroup.procs && exec {quoted}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/expo-peak"))
    ap.add_argument("--cgroup-mib", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sft, dpo = make_pair(args.workdir)
    out = args.workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [shutil.which("expo-stream"), "merge", "--sft", str(sft), "--dpo", str(dpo),
           "--out", str(out), "--alpha", "0.3", "--quiet"]
    if args.cgroup_mib:
        cmd = in_cgroup(cmd, args.cgroup_mib)
    rc, peak, wall = run_sampled(cmd)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors")) if out.exists() else 0
    print(json.dumps({"exit_code": rc, "peak_rss_anon_mib": round(peak / 2**20, 1),
                      "wall_s": round(wall, 2), "output_bytes": size,
                      "largest_tensor_bytes": VOCAB * HIDDEN * 2,
                      "cgroup_limit_mib": args.cgroup_mib}))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
