"""Choosing α: build every candidate in one pass, generate, score, report.

The candidates come from the engine's several-α merge (``expo_stream.merge`` with a list of α:
the inputs are read once). α = 0 is θ_dpo itself and is the baseline for win rates. Length is
reported beside reward because extrapolation lengthens answers, and reward models reward length.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import merge
from ..errors import ExpoStreamError, UsageError
from .diagnostics import diagnose
from .generate import Sampling, generate_outputs, load_model
from .score import summarize


def select_alpha(sft: str | Path, dpo: str | Path, alphas: list[float], prompts: list[dict], out: Path, *,
                 scorer_factory, sampling: Sampling, device: str = "cpu", batch_size: int = 8,
                 keep: str = "best", overwrite: bool = False, executor: str = "threads",
                 ray_address: str | None = None) -> dict:
    """Run the whole selection; returns the report (also written as JSON and Markdown, + PNG).

    Args:
        sft, dpo: local paths or Hub repo ids (as :func:`expo_stream.merge` takes them).
        scorer_factory: ``() -> scorer`` with ``score(records) -> list[float]``; created once,
            after the candidates exist (with Ray: once per candidate, on its node, so it must
            pickle).
        keep: ``best`` deletes every candidate model but the best (all of the tied ones on
            a tie); ``all`` keeps them.
        executor: ``threads`` (one several-α merge, then each candidate in turn here) or
            ``ray`` (each candidate merged, generated and scored by one Ray task, in parallel;
            see generation/sweep_ray.py). ``ray_address`` as for ``merge --executor ray``.

    Returns:
        ``best_alpha`` is None when several α share the highest mean reward; ``tied_alphas``
        lists them. With Ray, a candidate that failed is a row with ``error`` and no numbers.
    """
    alphas = sorted(set([0.0, *alphas]))
    if len(alphas) < 2:
        raise UsageError("give at least one non-zero α to compare with α = 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    candidates = out / "candidates"
    if executor == "ray":
        from .sweep_ray import run_candidates

        evaluated = run_candidates(sft, dpo, alphas, prompts, out, candidates,
                                   scorer_factory=scorer_factory, sampling=sampling,
                                   batch_size=batch_size, overwrite=overwrite, address=ray_address)
    else:
        result = merge(sft, dpo, candidates, alpha=",".join(repr(a) for a in alphas),
                       overwrite=overwrite)
        scorer = scorer_factory()
        evaluated = {alpha: (model_dir, *evaluate(model_dir, alpha, prompts, out, scorer,
                                                  sampling, device, batch_size, overwrite))
                     for alpha, model_dir in zip(alphas, result.outputs)}
    failed = {a: v for a, v in evaluated.items() if isinstance(v, str)}
    if 0.0 in failed:
        raise ExpoStreamError(f"α = 0 (the baseline every win rate needs) failed: {failed[0.0]}")
    outputs = {a: v[1:] for a, v in evaluated.items() if a not in failed}
    rows = []
    base_records, base_scores = outputs[0.0]
    for alpha in alphas:
        if alpha in failed:
            rows.append({"alpha": alpha, "error": failed[alpha], "model": None})
            continue
        records, scores = outputs[alpha]
        summary = summarize(records, scores, base_records, base_scores)
        rows.append({"alpha": alpha, "mean_reward": summary["mean"],
                     "win_rate_vs_alpha0": summary["win_rate"],
                     "avg_length_words": summary["avg_length_words"],
                     "echo_rate": diagnose(records)["echo_rate"],
                     "model": str(evaluated[alpha][0])})
    scored = [r for r in rows if "error" not in r]
    top = max(r["mean_reward"] for r in scored)
    best = [r for r in scored if r["mean_reward"] == top]
    # A tie has no winner: every tied α is reported and kept, α = 0 (DPO itself) included.
    report = {"alphas": alphas, "best_alpha": best[0]["alpha"] if len(best) == 1 else None,
              "tied_alphas": [r["alpha"] for r in best] if len(best) > 1 else [],
              "rows": rows, "sampling": sampling.__dict__, "prompts": len(prompts)}
    if keep == "best":
        for row in scored:
            if row not in best:
                shutil.rmtree(row["model"], ignore_errors=True)
                row["model"] = None
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "report.png")
    return report


def markdown(report: dict) -> str:
    lines = ["# α selection", "", f"{report['prompts']} prompts; {verdict(report)}.",
             "", "| α | mean reward | win rate vs α=0 | avg length (words) | echo rate |",
             "| --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['alpha']:g} | failed: {r['error']} | | | |")
            continue
        win = "—" if r["win_rate_vs_alpha0"] is None else f"{r['win_rate_vs_alpha0']:.3f}"
        lines.append(f"| {r['alpha']:g} | {r['mean_reward']:.4f} | {win} | "
                     f"{r['avg_length_words']:.1f} | {r['echo_rate']:.3f} |")
    return "\n".join(lines) + "\n"


def verdict(report: dict) -> str:
    """``best α = 0.5 (highest mean reward)``, or the tie."""
    if report["best_alpha"] is not None:
        return f"best α = **{report['best_alpha']:g}** (highest mean reward)"
    tied = ", ".join(f"{a:g}" for a in report["tied_alphas"])
    everyone = len(report["tied_alphas"]) == sum("error" not in r for r in report["rows"])
    return (f"no best α: {'every candidate' if everyone else 'α = ' + tied} tied on mean reward"
            f"{' (' + tied + ')' if everyone else ''}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "error" not in r]
    alphas = [r["alpha"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(alphas, [r["mean_reward"] for r in rows], "o-", color="tab:blue")
    ax.set_xlabel("α")
    ax.set_ylabel("mean reward", color="tab:blue")
    twin = ax.twinx()
    twin.plot(alphas, [r["avg_length_words"] for r in rows], "s--", color="tab:orange")
    twin.set_ylabel("average length (words)", color="tab:orange")
    if report["best_alpha"] is not None:
        ax.axvline(report["best_alpha"], color="grey", lw=0.8)
    ax.set_title("reward and length against α")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(model_dir: Path, alpha: float, prompts: list[dict], out: Path, scorer,
             sampling: Sampling, device: str, batch_size: int, overwrite: bool
             ) -> tuple[list[dict], list[float]]:
    """One candidate's answers to ``prompts`` (also written to ``out``) and their scores."""
    model, tokenizer = load_model(model_dir, device, None)
    records = generate_outputs(model, tokenizer, prompts, sampling=sampling,
                               batch_size=batch_size, generator=f"expo-alpha-{alpha:g}",
                               out=out / f"outputs-alpha-{alpha:g}.json", progress=False,
                               overwrite=overwrite)
    del model
    return records, scorer.score(records)
