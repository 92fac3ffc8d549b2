"""Hub to Hub merge benchmark: download-first against streaming, on the local Hub stand-in.

    python bench/hub_stream.py --workdir /tmp/hub-bench --size-gb 2 --bandwidth 200e6

Builds (or reuses from --workdir) a synthetic BF16 SFT/DPO pair of about --size-gb in total
(bench/checkpoints.py's writer; Llama tensor names; SFT and DPO sharded differently), seeds both
into tests/hub_server.LocalHub as org/sft and org/dpo (``add_repo``: blobs hard-linked, no
upload), limits the stand-in's download (and upload) bandwidth, then runs in one process, each
as a child with its own HF_HOME and TMPDIR under --workdir:

  (a) download-first: expo-stream merge --sft org/sft --dpo org/dpo --alpha 0.3 --out DIR
      --push-to org/out-a   (both inputs into the HF cache, merge to DIR, push)
  (b) streaming:      expo-stream merge --sft org/sft --dpo org/dpo --alpha 0.3 --stream
      --push-to org/out-b   (no --out)

For each: wall time, bytes downloaded / uploaded (the stand-in's request records), peak local
disk (allocated bytes under the mode's folder: HF_HOME, TMPDIR, --out and its working
directory, polled every 50 ms), peak RssAnon of the child and its descendants (polled every
50 ms). A mode the CLI does not offer yet (a usage error) is reported "unavailable". Then checks
that both pushed repos hold the same safetensors and index bytes (sha256 from the stand-in's
store). Prints a markdown table and appends one JSON line per mode to --results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import ml_dtypes
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import checkpoints  # noqa: E402
from rss import rss_anon_bytes  # noqa: E402

from expo_stream.demo import llama_shapes  # noqa: E402
from tests.hub_server import TOKEN, LocalHub  # noqa: E402

ALPHA = "0.3"
POLL = 0.05


# -- the pair --------------------------------------------------------------------------------------
def config_for(size_gb: float) -> dict:
    """A Llama config whose BF16 checkpoint is about size_gb / 2 GB (one half of the pair)."""
    per_checkpoint = size_gb * 1e9 / 2
    if per_checkpoint >= 0.5e9:
        dims = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                    num_key_value_heads=8, vocab_size=32000)
    else:
        dims = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                    num_key_value_heads=4, vocab_size=8000)
    config = dict(checkpoints.COMMON, model_type="llama", architectures=["LlamaForCausalLM"],
                  num_hidden_layers=1, **dims)
    one = _bytes(llama_shapes(config))
    config["num_hidden_layers"] = 2
    per_layer = _bytes(llama_shapes(config)) - one
    config["num_hidden_layers"] = max(2, round((per_checkpoint - (one - per_layer)) / per_layer))
    return config


def _bytes(shapes: dict) -> int:
    return sum(int(np.prod(s)) * 2 for s in shapes.values())


def make_pair(root: Path, size_gb: float) -> tuple[Path, Path, int]:
    """root/sft and root/dpo (reused when root/DONE says they are complete); returns their paths
    and the bytes of one checkpoint's tensors. SFT comes in about 2 shards, DPO in about 3."""
    config = config_for(size_gb)
    total = _bytes(llama_shapes(config))
    done = root / "DONE"
    if done.exists() and json.loads(done.read_text()) == config:
        return root / "sft", root / "dpo", total
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal(checkpoints.BLOCK, dtype=np.float32) * 0.02
    sft = base.astype(ml_dtypes.bfloat16)
    dpo = (base + rng.standard_normal(checkpoints.BLOCK, dtype=np.float32) * 2e-4).astype(ml_dtypes.bfloat16)
    del base
    shapes = llama_shapes(config)
    checkpoints._write_checkpoint(root / "sft", shapes, sft, total // 2 + 1, config)
    checkpoints._write_checkpoint(root / "dpo", shapes, dpo, total // 3 + 1, config)
    done.write_text(json.dumps(config))
    return root / "sft", root / "dpo", total


# -- sampling --------------------------------------------------------------------------------------
def allocated_bytes(folder: Path) -> int:
    """Disk blocks allocated to regular files under folder (symlinks not followed)."""
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:
                pass  # a temporary file renamed or removed meanwhile
    return total


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def run_measured(cmd: list[str], env: dict, cwd: Path, watch: Path, timeout: float) -> dict:
    """Run cmd; peak allocated disk under ``watch`` and peak RssAnon of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peaks = {"disk": 0, "rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peaks["disk"] = max(peaks["disk"], allocated_bytes(watch))
            peaks["rss"] = max(peaks["rss"], sum(rss_anon_bytes(p) for p in descendants(proc.pid)))
            stop.wait(POLL)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        rc = "timeout"
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    return {"rc": rc, "wall_s": round(wall, 2), "peak_disk_bytes": peaks["disk"],
            "peak_rss_anon_bytes": peaks["rss"], "stdout": stdout, "stderr": stderr}


# -- the modes -------------------------------------------------------------------------------------
def child_env(hub: LocalHub, folder: Path) -> dict:
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(folder / "hf-home"), TMPDIR=str(folder / "tmp"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_XET_CACHE"):
        env.pop(name, None)
    return env


def usage_error(result: dict) -> bool:
    """click's usage errors: exit code 2 with "Usage:" (an unknown option, a missing --out)."""
    return result["rc"] == 2 and "Usage:" in result["stderr"]


def run_mode(mode: str, hub: LocalHub, workdir: Path, shard: str, timeout: float) -> dict:
    folder = workdir / f"mode-{mode}"
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("hf-home", "tmp", "work"):
        (folder / sub).mkdir(parents=True)
    repo = f"org/out-{mode}"
    args = ["merge", "--sft", "org/sft", "--dpo", "org/dpo", "--alpha", ALPHA, "--max-shard-size", shard,
            "--push-to", repo, "--quiet"]
    args += ["--out", str(folder / "out")] if mode == "a" else ["--stream"]
    cmd = [sys.executable, "-m", "expo_stream.cli", *args]
    before = hub.traffic()
    requests_before = len(hub.requests(kind=None))
    result = run_measured(cmd, child_env(hub, folder), folder / "work", folder, timeout)
    after = hub.traffic()
    result.update(mode={"a": "download-first", "b": "streaming"}[mode], repo=repo,
                  command="expo-stream " + " ".join(args),
                  down_bytes=after["down"] - before["down"], up_bytes=after["up"] - before["up"],
                  requests=len(hub.requests(kind=None)) - requests_before)
    if result["rc"] == 0 and repo in hub.state.repos:
        result["status"] = "ok"
    elif usage_error(result):
        result["status"] = "unavailable"
    else:
        result["status"] = "failed"
    return result


def compare_pushed(hub: LocalHub, repos: list[str]) -> dict:
    """Which files the pushed repos share with identical sha256, and which differ."""
    manifests = [hub.manifest(r) for r in repos]
    names = sorted(set().union(*manifests))
    same = [n for n in names if len({m.get(n, {}).get("sha256") for m in manifests}) == 1]
    weights = [n for n in names if n.endswith(".safetensors") or n.endswith(".safetensors.index.json")]
    return {"identical": same, "different": [n for n in names if n not in same],
            "weights_identical": bool(weights) and all(n in same for n in weights)}


# -- report ----------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def table(results: list[dict], pair_bytes: int, bandwidth: float | None = None) -> str:
    rows = ["| mode | status | wall s | down MB | up MB | requests | peak disk MB | peak RssAnon MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["status"] == "unavailable":
            rows.append(f"| {r['mode']} | unavailable | | | | | | |")
            continue
        rows.append(f"| {r['mode']} | {r['status']} | {r['wall_s']:.1f} | {mb(r['down_bytes'])} | "
                    f"{mb(r['up_bytes'])} | {r['requests']} | {mb(r['peak_disk_bytes'])} | "
                    f"{mb(r['peak_rss_anon_bytes'])} |")
    rows.append(f"\ninputs: {mb(pair_bytes)} MB of tensors (SFT + DPO)"
                + (f"; downloading them takes at least {pair_bytes / bandwidth:.1f} s at "
                   f"{bandwidth / 1e6:g} MB/s" if bandwidth else ""))
    return "\n".join(rows)


def parse_size(text: str) -> int:
    units = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(float(t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="where the pair, the stand-in's store and each mode's "
                    "HF_HOME/TMPDIR/out live (default: a temporary folder, removed unless --keep); "
                    "a pair already there is reused")
    ap.add_argument("--size-gb", type=float, default=2.0, help="SFT + DPO size (default 2)")
    ap.add_argument("--bandwidth", type=float, default=200e6, help="download bytes/s (default 200e6; 0: none)")
    ap.add_argument("--upload-bandwidth", type=float, help="upload bytes/s (default: --bandwidth)")
    ap.add_argument("--part-size", default="64MB", help="the stand-in's multipart part size (default 64MB)")
    ap.add_argument("--max-shard-size", default="256MB", help="output shard size for both modes")
    ap.add_argument("--modes", default="a,b", help="a (download-first), b (streaming) or both")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per mode")
    ap.add_argument("--results", type=Path, default=HERE / "results-hub-stream.jsonl")
    ap.add_argument("--keep", action="store_true", help="keep each mode's folder (and a temporary workdir)")
    args = ap.parse_args()

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="hub-bench-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        sft, dpo, one = make_pair(workdir / f"pair-{args.size_gb:g}gb", args.size_gb)
        print(f"pair: {sft.parent} ({mb(2 * one)} MB of tensors, {time.perf_counter() - started:.1f} s)")
        shutil.rmtree(workdir / "hub", ignore_errors=True)
        part = parse_size(args.part_size)
        upload = args.upload_bandwidth if args.upload_bandwidth is not None else args.bandwidth
        with LocalHub(workdir / "hub", bandwidth=args.bandwidth or None, upload_bandwidth=upload or None,
                      multipart_threshold=part, part_size=part) as hub:
            started = time.perf_counter()
            hub.add_repo("org/sft", sft)
            hub.add_repo("org/dpo", dpo)
            print(f"seeded org/sft, org/dpo at {hub.endpoint} ({time.perf_counter() - started:.1f} s)")
            results = []
            for mode in args.modes.split(","):
                r = run_mode(mode.strip(), hub, workdir, args.max_shard_size, args.timeout)
                results.append(r)
                line = f"({mode}) {r['mode']}: {r['status']}, rc {r['rc']}, {r['wall_s']} s"
                if r["status"] != "ok":
                    line += "\n    " + (r["stderr"].strip().splitlines() or ["(no stderr)"])[-1]
                print(line, flush=True)
                if not args.keep:
                    shutil.rmtree(workdir / f"mode-{mode.strip()}", ignore_errors=True)
            pushed = [r["repo"] for r in results if r["status"] == "ok"]
            check = compare_pushed(hub, pushed) if len(pushed) == 2 else None
        print()
        print(table(results, 2 * one, args.bandwidth or None))
        if check is not None:
            print(f"\npushed weights identical (sha256): {check['weights_identical']}; "
                  f"identical files: {len(check['identical'])}; differing: {check['different'] or 'none'}")
        common = {"bench": "hub_stream", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "commit": git_commit(), "size_gb": args.size_gb, "pair_bytes": 2 * one,
                  "bandwidth": args.bandwidth, "upload_bandwidth": upload, "part_size": part,
                  "max_shard_size": args.max_shard_size, **machine(),
                  "pushed_identical": check}
        with open(args.results, "a") as f:
            for r in results:
                row = {**common, **{k: v for k, v in r.items() if k not in ("stdout", "stderr")}}
                if r["status"] != "ok":
                    row["error"] = (r["stderr"].strip().splitlines() or [""])[-1]
                f.write(json.dumps(row) + "\n")
        print(f"\nappended {len(results)} lines to {args.results}")
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
