"""Turn bench/results.jsonl (from bench/run.py) and bench/kernels.json into RESULTS.md + plots.

    python bench/report.py
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = [("expo", "expo-stream α=0.3"), ("expo-layers", "expo-stream layer groups"),
         ("mergekit", "mergekit task_arithmetic"), ("naive", "naive full load (original script)")]


def _mib(v) -> str:
    return "—" if v is None else (f"{v / 1024:.1f} GiB" if v >= 1024 else f"{v:.0f} MiB")


def table(record: dict) -> list[str]:
    floor = record["floor"]
    lines = [
        f"### {record['model']} ({record['parameters'] / 1e9:.2f} B parameters, "
        f"{record['input_bytes'] / 1e9:.1f} GB of inputs)",
        "",
        f"Disk floor: read both inputs {floor['read_s']} s + write the output size with "
        f"fdatasync {floor['write_s']} s = **{floor['wall_s']} s**.",
        "",
        "| tool | wall (s) | × floor | peak anon RSS | completes in cgroup | killed / too slow at |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in TOOLS:
        r = record.get(key)
        if not r or "skipped" in r:
            continue
        if r["exit_code"] != 0:
            status = "timed out" if r.get("timed_out") else f"failed (exit {r['exit_code']})"
            lines.append(f"| {label} | {status} after {r['wall_s']} | — | {_mib(r['peak_rss_anon_mib'])} | — | — |")
            continue
        lines.append(
            f"| {label} | {r['wall_s']} | {r['ratio_to_floor']} | {_mib(r['peak_rss_anon_mib'])} | "
            f"{_mib(r.get('completes_under_mib'))} | {_mib(r.get('killed_at_mib'))} |")
    return lines + [""]


def plots(records: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["parameters"] / 1e9 for r in records]
    made = []
    for metric, ylabel, name, log in (("wall_s", "wall time (s)", "wall_time.png", False),
                                      ("peak_rss_anon_mib", "peak anonymous RSS (MiB)", "peak_memory.png", True)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if metric == "wall_s":
            ax.plot(sizes, [r["floor"]["wall_s"] for r in records], "k--", label="disk floor")
        for key, label in TOOLS:
            pts = [(s, r[key][metric]) for s, r in zip(sizes, records)
                   if r.get(key) and r[key].get("exit_code") == 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xlabel("model size (billion parameters)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(HERE / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def versions() -> str:
    def pip_version(python: str, name: str) -> str:
        out = subprocess.run([python, "-m", "pip", "show", name], capture_output=True, text=True)
        return next((l.split()[1] for l in out.stdout.splitlines() if l.startswith("Version:")), "?")

    mk = "/work/mk-venv/bin/python"
    bench = "/work/bench-venv/bin/python"
    return (f"expo-stream {pip_version(bench, 'expo-stream')}, numpy {pip_version(bench, 'numpy')}, "
            f"torch {pip_version(bench, 'torch')}, transformers {pip_version(bench, 'transformers')}; "
            f"mergekit {pip_version(mk, 'mergekit')} (own venv, torch {pip_version(mk, 'torch')})")


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 2**20
    import os

    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}"


def main() -> None:
    records = [json.loads(l) for l in (HERE / "results.jsonl").read_text().splitlines() if l.strip()]
    kernels = json.loads((HERE / "kernels.json").read_text()) if (HERE / "kernels.json").exists() else None
    text = (HERE / "RESULTS.head.md").read_text().format(machine=machine(), versions=versions())
    body = []
    for r in records:
        body += table(r)
    made = plots(records)
    body += [f"![{m}]({m})" for m in made] + [""]
    if kernels:
        body += ["## Kernel throughput (hot cache, one thread)", "",
                 f"`python bench/kernels.py` — {kernels['elements']:,} checkpoint-like BF16 elements, "
                 f"α = 0.3, BF16 out. Memory bandwidth in the same run (NumPy copy, read + write): "
                 f"**{kernels['numpy_copy_GBps']} GB/s**.", "",
                 "| backend | output GB/s per core | elements/s |", "| --- | --- | --- |"]
        for name, v in kernels.items():
            if isinstance(v, dict):
                body.append(f"| {name} | {v['output_GBps_per_core']} | {v['elements_per_s']:,} |")
        body.append("")
    (HERE / "RESULTS.md").write_text(text + "\n".join(body))


if __name__ == "__main__":
    main()
