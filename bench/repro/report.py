"""Tables and plots of a bench/repro.py run, from its results.json (or, for a run still going
or interrupted, from its records.json, marked partial).

    python -m bench.repro.report RUN_DIR [--plot PNG]   # Markdown on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

# The paper's zephyr numbers (AlpacaEval 2.0 LC win rate, %): DPO on a fraction of
# UltraFeedback, then the best ExPO α (Zheng et al. 2024, table quoted in issue 15).
PAPER = {0.05: (9.1, 14.7, 25), 0.1: (10.4, 16.3, 8), 0.2: (12.9, 21.3, 2.5), 1.0: (17.3, 20.2, 0.3)}

METRICS = ("reward_strict_mean", "reward_loose_mean", "all_satisfied_rate", "implicit_reward_mean",
           "length_words_mean", "echo_rate", "instruction_only_rate", "repetition_rate", "empty_rate")


def summarize(records: list[dict]) -> list[dict]:
    """One row per (fraction, schedule, α): each metric's mean over seeds and its spread (the
    standard deviation over seeds; with one seed, 0) and the prompt-level spread of the reward
    (standard error of the mean over prompts, averaged over seeds)."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["fraction"], r["schedule"], r["alpha"]), []).append(r)
    rows = []
    for (fraction, schedule, alpha), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], -1 if kv[0][2] is None else kv[0][2])):
        row = {"fraction": fraction, "schedule": schedule, "alpha": alpha, "seeds": len(rs),
               "layer_alphas": rs[0]["layer_alphas"]}
        for m in METRICS:
            values = [r[m] for r in rs]
            row[m] = statistics.fmean(values)
            row[m.replace("_mean", "") + "_seed_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        row["reward_strict_sem"] = statistics.fmean(
            r["reward_strict_std"] / math.sqrt(r["n_prompts"]) for r in rs)
        rows.append(row)
    return rows


def best_alphas(summary: list[dict]) -> list[dict]:
    """Per fraction: α = 0 (the DPO model) against the best α of each schedule (strict reward)."""
    out = []
    for fraction in sorted({r["fraction"] for r in summary if r["schedule"] != "sft"}):
        rows = [r for r in summary if r["fraction"] == fraction]
        base = next(r for r in rows if r["schedule"] == "uniform" and r["alpha"] == 0)
        entry = {"fraction": fraction, "dpo_reward": base["reward_strict_mean"]}
        for schedule in ("uniform", "layerwise"):
            cands = [r for r in rows if r["schedule"] == schedule]
            if cands:
                best = max(cands, key=lambda r: r["reward_strict_mean"])
                entry[schedule] = {"alpha": best["alpha"], "reward": best["reward_strict_mean"],
                                   "seed_std": best["reward_strict_seed_std"]}
        out.append(entry)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    fractions = sorted({r["fraction"] for r in summary if r["schedule"] != "sft"})
    sft = next((r for r in summary if r["schedule"] == "sft"), None)
    full = next((r for r in summary if r["fraction"] == 1.0 and r["schedule"] == "uniform"
                 and r["alpha"] == 0), None)
    fig, axes = plt.subplots(1, len(fractions), figsize=(3.6 * len(fractions), 3.4), sharey=True,
                             squeeze=False)
    for ax, fraction in zip(axes[0], fractions):
        for schedule, style in (("uniform", "o-"), ("layerwise", "s")):
            rows = [r for r in summary if r["fraction"] == fraction and r["schedule"] == schedule]
            if not rows:
                continue
            xs = [r["alpha"] for r in rows]
            ys = [r["reward_strict_mean"] for r in rows]
            err = [r["reward_strict_seed_std"] for r in rows]
            label = "uniform α" if schedule == "uniform" else "layerwise (a/2, a, 3a/2) at a"
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label, markersize=4)
        if full is not None:
            ax.axhline(full["reward_strict_mean"], color="tab:red", ls="--", lw=1, label="DPO 100 %")
        if sft is not None:
            ax.axhline(sft["reward_strict_mean"], color="gray", ls=":", lw=1, label="SFT")
        ax.set_xscale("symlog", linthresh=1)
        alphas = [r["alpha"] for r in summary if r["fraction"] == fraction and r["alpha"] is not None]
        ax.set_xlim(-0.15, 1.3 * max(alphas + [1]))
        ax.set_title(f"{fraction:.0%} of the pairs")
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out verifiable reward (strict)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



def _alpha(row: dict) -> str:
    if row["schedule"] == "sft":
        return "–"
    if row["schedule"] == "layerwise":
        return f"{row['alpha']:g} ({'/'.join(f'{x:g}' for x in row['layer_alphas'])})"
    return f"{row['alpha']:g}"


def table(summary: list[dict]) -> str:
    """The Markdown table: one row per (fraction, schedule, α), means over seeds ± their std."""
    head = ("| pairs | schedule | α | seeds | strict reward | ± prompts (SE) | loose reward | "
            "all satisfied | implicit reward | words | echo | instr.-only | repetitive |")
    lines = [head, "|" + "---|" * 13]
    for r in summary:
        fraction = "SFT" if r["schedule"] == "sft" else f"{r['fraction']:.0%}"
        spread = f" ± {r['reward_strict_seed_std']:.3f}" if r["seeds"] > 1 else ""
        lines.append(
            f"| {fraction} | {r['schedule']} | {_alpha(r)} | {r['seeds']} | "
            f"{r['reward_strict_mean']:.3f}{spread} | {r['reward_strict_sem']:.3f} | "
            f"{r['reward_loose_mean']:.3f} | {r['all_satisfied_rate']:.3f} | "
            f"{r['implicit_reward_mean']:+.3f} | {r['length_words_mean']:.1f} | {r['echo_rate']:.2f} | "
            f"{r['instruction_only_rate']:.2f} | {r['repetition_rate']:.2f} |")
    return "\n".join(lines)


def best_table(best: list[dict], summary: list[dict]) -> str:
    """Per fraction: the DPO model, the best uniform and layerwise α, and the paper's row."""
    full = next((r for r in summary if r["fraction"] == 1.0 and r["schedule"] == "uniform"
                 and r["alpha"] == 0), None)
    lines = ["| pairs | DPO (α = 0) | best uniform α → reward | best layerwise a → reward | "
             "beats DPO 100 %? | paper (zephyr, AlpacaEval 2.0 LC) |", "|---|---|---|---|---|---|"]
    for b in best:
        u, l = b.get("uniform"), b.get("layerwise")
        top = max(x["reward"] for x in (u, l) if x)
        beats = "–"
        if full is not None and b["fraction"] != 1.0:
            ref = full["reward_strict_mean"]
            word = "ties" if math.isclose(top, ref) else "yes" if top > ref else "no"
            beats = f"{word} ({top:.3f} vs {ref:.3f})"
        paper = PAPER.get(b["fraction"])
        paper_text = f"{paper[0]} → {paper[1]} at α = {paper[2]:g}" if paper else "–"

        def fmt(x):
            if not x:
                return "–"
            spread = f" ± {x['seed_std']:.3f}" if x["seed_std"] else ""
            return f"{x['alpha']:g} → {x['reward']:.3f}{spread}"

        lines.append(f"| {b['fraction']:.0%} | {b['dpo_reward']:.3f} | {fmt(u)} | {fmt(l)} | {beats} | {paper_text} |")
    return "\n".join(lines)


def load(run: Path) -> tuple[dict, bool]:
    """(results, partial): results.json, or a partial view built from records.json."""
    run = Path(run)
    if (run / "results.json").is_file():
        return json.loads((run / "results.json").read_text()), False
    records = json.loads((run / "records.json").read_text())
    summary = summarize(records)
    return {"records": records, "summary": summary, "best": _safe_best(summary)}, True


def _safe_best(summary: list[dict]) -> list[dict]:
    # A fraction whose α = 0 row is not evaluated yet has no "best" entry.
    done = {r["fraction"] for r in summary if r["schedule"] == "uniform" and r["alpha"] == 0}
    return best_alphas([r for r in summary if r["schedule"] == "sft" or r["fraction"] in done])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Markdown tables (and a plot) of a repro run.")
    parser.add_argument("run", type=Path)
    parser.add_argument("--plot", type=Path, help="Write the reward-vs-α plot here.")
    args = parser.parse_args(argv)
    results, partial = load(args.run)
    if partial:
        print(f"**PARTIAL**: {args.run}/results.json does not exist yet; "
              f"{len(results['records'])} records from records.json.\n")
    print(table(results["summary"]))
    print()
    print(best_table(results["best"], results["summary"]))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
