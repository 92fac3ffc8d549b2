"""Side-by-side merge benchmark: expo-stream, mergekit, the naive full-load way, the disk floor.

    sudo python bench/run.py --models llama-0.5b,llama-1b,llama-3b,mistral-7b,llama3-8b \
        --workdir /tmp/expo-bench --mergekit /work/mk-venv/bin/mergekit-yaml --simd avx2

For each model size: write a synthetic pair (bench/checkpoints.py), then ``--repeats`` rounds of
the disk floor and every tool (medians reported, every run kept), each from a cold page cache:
wall time, peak anonymous RSS (sampled every 5 ms), and the smallest memory
cgroup (v1, page cache included) it completes under, found by stepping over a ladder of limits
from its measured peak. Results are appended to --results (JSON lines) and bench/report.py
turns them into bench/RESULTS.md and plots. Needs root (drop_caches, cgroups). At most two
inputs and one output exist at a time; everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from checkpoints import make_pair, parameter_count  # noqa: E402
from rss import TIMED_OUT, run_sampled  # noqa: E402

LADDER_MIB = [128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 20480]
CGROUP = Path("/sys/fs/cgroup/memory/expo-bench")
ALPHA = 0.3


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def in_cgroup(cmd: list[str], limit_mib: int | None) -> list[str]:
    if limit_mib is None:
        return cmd
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "memory.limit_in_bytes").write_text(str(limit_mib * 2**20))
    quoted = " ".join(f"'{c}'" for c in cmd)
    return ["sh", "-c", f"echo $$ > {CGROUP}/cgroup.procs && exec {quoted}"]


def timed(cmd: list[str], out: Path | None, limit_mib: int | None = None,
          timeout: float | None = None) -> dict:
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    drop_caches()
    rc, peak, wall = run_sampled(in_cgroup(cmd, limit_mib), timeout=timeout,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {"exit_code": rc, "wall_s": round(wall, 2), "peak_rss_anon_mib": round(peak / 2**20, 1)}
    if rc == TIMED_OUT:
        result["timed_out"] = True
    if out is not None:
        result["output_bytes"] = dir_bytes(out) if out.exists() else 0
        shutil.rmtree(out, ignore_errors=True)
    return result


def smallest_limit(cmd: list[str], out: Path, peak_mib: float, tries: int, wall_s: float) -> dict:
    """Step over LADDER_MIB from the measured peak: the smallest passing and largest failing.

    A run slower than 3x the unlimited one (or 60 s) counts as failing: it is thrashing.
    """
    i = next((k for k, v in enumerate(LADDER_MIB) if v >= peak_mib * 1.1), len(LADDER_MIB) - 1)
    passed, failed = None, None
    for _ in range(tries):
        ok = timed(cmd, out, LADDER_MIB[i], timeout=max(60.0, 3 * wall_s))["exit_code"] == 0
        if ok:
            passed = LADDER_MIB[i]
            if i == 0 or (failed is not None and LADDER_MIB[i - 1] == failed):
                break
            i -= 1
        else:
            failed = LADDER_MIB[i]
            if passed is not None or i == len(LADDER_MIB) - 1:
                break
            i += 1
    return {"completes_under_mib": passed, "killed_at_mib": failed}


def floor(sft: Path, dpo: Path, workdir: Path, out_bytes: int) -> dict:
    files = sorted(str(f) for d in (sft, dpo) for f in d.glob("*.safetensors"))
    drop_caches()
    t = time.perf_counter()
    subprocess.run(["sh", "-c", "cat \"$@\" > /dev/null", "cat", *files], check=True)
    read_s = time.perf_counter() - t
    target = workdir / "floor.bin"
    count = math.ceil(out_bytes / 2**24)
    drop_caches()
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=16M", f"count={count}",
                    "conv=fdatasync"], check=True, capture_output=True)
    write_s = time.perf_counter() - t
    target.unlink()
    return {"read_s": round(read_s, 2), "write_s": round(write_s, 2),
            "wall_s": round(read_s + write_s, 2)}


def mergekit_config(sft: Path, dpo: Path, path: Path) -> Path:
    path.write_text(
        "merge_method: task_arithmetic\n"
        f"base_model: {sft.resolve()}\n"
        "models:\n"
        f"  - model: {dpo.resolve()}\n"
        f"    parameters:\n      weight: {1 + ALPHA}\n"
        "parameters:\n  normalize: false\n"
        "dtype: float32\nout_dtype: bfloat16\n")
    return path


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle one for an even count), with every
    run's wall time beside it."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_wall_s"] = [r["wall_s"] for r in runs]
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama-0.5b,llama-1b,llama-3b,mistral-7b,llama3-8b")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/expo-bench"))
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--mergekit", default=shutil.which("mergekit-yaml"),
                    help="mergekit-yaml of mergekit's own venv")
    ap.add_argument("--tools", default="expo,expo-layers,mergekit,naive")
    ap.add_argument("--limit-tries", type=int, default=3, help="cgroup runs per tool (0: none)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of floor + every tool")
    ap.add_argument("--simd", choices=["avx512", "avx2", "baseline"],
                    help="force expo-stream's SIMD level (EXPO_STREAM_SIMD)")
    ap.add_argument("--no-report", dest="report", action="store_false",
                    help="skip bench/kernels.py and bench/report.py at the end")
    args = ap.parse_args()
    tools = args.tools.split(",")
    expo = shutil.which("expo-stream")
    if expo is None:
        sys.exit("bench/run.py: expo-stream is not on PATH (activate the environment it is "
                 "installed in, e.g. `. .venv/bin/activate`)")
    if args.simd:
        os.environ["EXPO_STREAM_SIMD"] = args.simd
    version = subprocess.run([expo, "--version"], capture_output=True, text=True, check=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for model in args.models.split(","):
        pair = args.workdir / model
        t = time.perf_counter()
        sft, dpo = make_pair(model, pair)
        record = {"model": model, "parameters": parameter_count(model),
                  "generate_s": round(time.perf_counter() - t, 1),
                  "input_bytes": dir_bytes(sft) + dir_bytes(dpo),
                  "expo_version": version.stdout.strip()}
        out = args.workdir / "out"
        out_bytes = record["parameters"] * 2
        commands = {
            "expo": [expo, "merge", "--sft", str(sft), "--dpo", str(dpo), "--out", str(out),
                     "--alpha", str(ALPHA), "--dtype", "bf16", "--quiet"],
            "expo-layers": [expo, "merge", "--sft", str(sft), "--dpo", str(dpo), "--out",
                            str(out), "--layer-alphas", "5,10,15", "--dtype", "bf16", "--quiet"],
            "mergekit": [args.mergekit, str(mergekit_config(sft, dpo, args.workdir / "mk.yml")),
                         str(out), "--no-write-model-card"] if args.mergekit else None,
            "naive": [sys.executable, str(HERE / "naive_expo.py"), str(sft), str(dpo), str(out),
                      str(ALPHA)],
        }
        runs: dict[str, list[dict]] = {"floor": []}
        for _ in range(args.repeats):
            runs["floor"].append(floor(sft, dpo, args.workdir, out_bytes))
            for tool in tools:
                cmd = commands.get(tool)
                if cmd is None:
                    continue
                # Capped a little below the machine's RAM, so a tool that does not fit (the
                # naive way on large models) is killed alone, not the machine.
                result = timed(cmd, out, (ram - 2 * 2**30) // 2**20,
                               timeout=max(300.0, 15 * runs["floor"][-1]["wall_s"]))
                result["ratio_to_floor"] = round(result["wall_s"] / runs["floor"][-1]["wall_s"], 2)
                runs.setdefault(tool, []).append(result)
                print(model, tool, json.dumps(result), flush=True)
        record["floor"] = median_run(runs["floor"])
        for tool in tools:
            if tool not in runs:
                record[tool] = {"skipped": "not installed"}
                continue
            result = median_run(runs[tool])
            result["ratio_to_floor"] = round(result["wall_s"] / record["floor"]["wall_s"], 2)
            ok = all(r["exit_code"] == 0 for r in runs[tool])
            if ok and args.limit_tries:
                result.update(smallest_limit(commands[tool], out, result["peak_rss_anon_mib"],
                                             args.limit_tries, result["wall_s"]))
            record[tool] = result
        record["command"] = " ".join(sys.argv)
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")
        shutil.rmtree(pair, ignore_errors=True)
    if args.report:
        with open(HERE / "kernels.json", "w") as f:
            subprocess.run([sys.executable, str(HERE / "kernels.py")], stdout=f, check=True)
        subprocess.run([sys.executable, str(HERE / "report.py")], check=True)


if __name__ == "__main__":
    main()
