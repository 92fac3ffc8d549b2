"""bench/repro/report.py: the seed summary, the best α per fraction and the Markdown tables."""

from __future__ import annotations

import pytest

from bench.repro.report import METRICS, best_alphas, summarize, table, best_table


def record(fraction, seed, schedule, alpha, reward, layer_alphas=None):
    r = {m: 0.0 for m in METRICS}
    r.update(model=f"m{fraction}-{seed}", fraction=fraction, seed=seed, schedule=schedule, alpha=alpha,
             layer_alphas=layer_alphas, reward_strict_mean=reward, reward_loose_mean=reward,
             reward_strict_std=0.5, n_prompts=25)
    return r


RECORDS = [
    record(0.0, None, "sft", None, 0.30),
    record(0.1, 0, "uniform", 0, 0.32), record(0.1, 1, "uniform", 0, 0.34),
    record(0.1, 0, "uniform", 4, 0.40), record(0.1, 1, "uniform", 4, 0.50),
    record(0.1, 0, "layerwise", 4, 0.20, [2, 4, 6]), record(0.1, 1, "layerwise", 4, 0.30, [2, 4, 6]),
    record(1.0, 0, "uniform", 0, 0.42), record(1.0, 0, "uniform", 4, 0.10),
]


def test_summary_averages_seeds_and_reports_their_spread():
    rows = {(r["fraction"], r["schedule"], r["alpha"]): r for r in summarize(RECORDS)}
    row = rows[(0.1, "uniform", 4)]
    assert row["seeds"] == 2
    assert row["reward_strict_mean"] == pytest.approx(0.45)
    assert row["reward_strict_seed_std"] == pytest.approx(0.05)
    assert row["reward_strict_sem"] == pytest.approx(0.1)  # 0.5 / sqrt(25)
    assert rows[(1.0, "uniform", 0)]["reward_strict_seed_std"] == 0.0


def test_best_alpha_per_fraction_and_schedule():
    best = {b["fraction"]: b for b in best_alphas(summarize(RECORDS))}
    assert best[0.1]["dpo_reward"] == pytest.approx(0.33)
    assert best[0.1]["uniform"]["alpha"] == 4 and best[0.1]["layerwise"]["alpha"] == 4
    assert best[1.0]["uniform"]["alpha"] == 0 and "layerwise" not in best[1.0]
    text = best_table(best_alphas(summarize(RECORDS)), summarize(RECORDS))
    assert "| 10% | 0.330 | 4 → 0.450 ± 0.050 | 4 → 0.250 ± 0.050 | yes (0.450 vs 0.420) |" in text
    assert "10.4 → 16.3 at α = 8" in text
    tied = [r if r["fraction"] != 0.1 or r["alpha"] != 4 else {**r, "reward_strict_mean": 0.42}
            for r in RECORDS]
    assert "ties (0.420 vs 0.420)" in best_table(best_alphas(summarize(tied)), summarize(tied))


def test_table_has_one_row_per_fraction_schedule_alpha():
    lines = table(summarize(RECORDS)).splitlines()
    assert len(lines) == 2 + 6
    assert any(line.startswith("| SFT | sft | – | 1 | 0.300 |") for line in lines)
    assert any("| layerwise | 4 (2/4/6) | 2 |" in line for line in lines)
