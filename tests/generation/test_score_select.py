"""Scoring (reward model, implicit reward) and α selection end to end on tiny models."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from expo_stream.cli import main  # noqa: E402
from expo_stream.generation.score import ImplicitRewardScorer, RewardModelScorer, summarize  # noqa: E402

from .tiny_lm import tiny_sft_dpo, tiny_tokenizer  # noqa: E402

RECORDS = [{"instruction": "say hello", "output": "hi there friend"},
           {"instruction": "name a color", "output": "blue"},
           {"instruction": "what is two plus two", "output": "four four four"}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_sft_dpo(tmp_path_factory.mktemp("pair"))


def test_implicit_reward_matches_a_direct_computation(pair):
    sft, dpo = pair
    scorer = ImplicitRewardScorer(sft, dpo, beta=0.1, batch_size=2)
    scores = scorer.score(RECORDS)
    tok = tiny_tokenizer()

    def logp(path, record):
        model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        prompt = tok.apply_chat_template([{"role": "user", "content": record["instruction"]}],
                                         add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tok(record["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0], -1)
        return sum(float(lp[len(p_ids) + k - 1, t]) for k, t in enumerate(r_ids))

    for record, got in zip(RECORDS, scores):
        want = 0.1 * (logp(dpo, record) - logp(sft, record))
        assert got == pytest.approx(want, abs=1e-4)
    same = ImplicitRewardScorer(sft, sft).score(RECORDS)
    assert same == [0.0, 0.0, 0.0]


def test_reward_model_scores_are_raw_logits_and_batch_independent(tmp_path):
    tok = tiny_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, num_labels=1,
                                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    batched = RewardModelScorer(tmp_path / "rm", batch_size=3).score(RECORDS)
    single = RewardModelScorer(tmp_path / "rm", batch_size=1).score(RECORDS)
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) == 3


def test_win_rate_counts_ties_half():
    records = [{"instruction": str(i), "output": "a b"} for i in range(4)]
    summary = summarize(records, [1.0, 2.0, 3.0, 0.0], records, [0.5, 2.0, 4.0, 0.0])
    assert summary["win_rate"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert summary["avg_length_words"] == 2


def test_score_command(pair, tmp_path):
    sft, dpo = pair
    outputs = tmp_path / "o.json"
    outputs.write_text(json.dumps(RECORDS))
    r = CliRunner().invoke(main, ["score", "--outputs", str(outputs), "--implicit-reward",
                                  "--sft", str(sft), "--dpo", str(dpo), "--baseline", str(outputs)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "o.json.scores.json").read_text())
    assert len(result["items"]) == 3 and result["summary"]["win_rate"] == 0.5


def test_select_alpha_end_to_end(pair, tmp_path):
    sft, dpo = pair
    prompts = tmp_path / "dev.txt"
    prompts.write_text("say hello\nname a color\n")
    r = CliRunner().invoke(main, ["select-alpha", "--sft", str(sft), "--dpo", str(dpo),
                                  "--alphas", "0.5,2", "--prompts", str(prompts), "--out",
                                  str(tmp_path / "sel"), "--implicit-reward", "--greedy",
                                  "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "sel" / "report.json").read_text())
    assert [row["alpha"] for row in report["rows"]] == [0.0, 0.5, 2.0]
    if report["best_alpha"] is None:  # greedy 4-token answers can tie (the next test's case)
        assert len(report["tied_alphas"]) >= 2 and "no best α" in r.output
    else:
        assert report["tied_alphas"] == [] and f"best α = {report['best_alpha']:g}" in r.output
    assert report["rows"][0]["win_rate_vs_alpha0"] == 0.5  # α=0 against itself: all ties
    for row in report["rows"]:
        assert row["avg_length_words"] > 0 and row["echo_rate"] == 0
        kept = [report["best_alpha"]] if report["best_alpha"] is not None else report["tied_alphas"]
        assert (row["model"] is not None) == (row["alpha"] in kept)
    assert (tmp_path / "sel" / "report.png").stat().st_size > 1000
    assert "| α | mean reward | win rate vs α=0 | avg length (words) | echo rate |" in \
        (tmp_path / "sel" / "report.md").read_text()


def test_select_alpha_reports_a_tie_as_a_tie(pair, tmp_path):
    from expo_stream.generation.generate import GREEDY
    from expo_stream.generation.select import select_alpha

    class Constant:
        def score(self, records):
            return [1.0] * len(records)

    sft, dpo = pair
    report = select_alpha(sft, dpo, [0.5, 2.0], [{"instruction": "say hello", "dataset": "t"}],
                          tmp_path / "sel", scorer_factory=Constant,
                          sampling=replace(GREEDY, max_new_tokens=2))
    assert report["best_alpha"] is None and report["tied_alphas"] == [0.0, 0.5, 2.0]
    assert all(row["model"] is not None for row in report["rows"])  # all tied: all kept
    text = (tmp_path / "sel" / "report.md").read_text()
    assert "no best α: every candidate tied on mean reward (0, 0.5, 2)" in text


def test_select_alpha_keeps_only_a_unique_winner(pair, tmp_path):
    from expo_stream.generation.generate import GREEDY
    from expo_stream.generation.select import select_alpha

    class PreferHalf:  # scores each candidate by its α, read from the generator name
        def score(self, records):
            return [-abs(float(r["generator"].removeprefix("expo-alpha-")) - 0.5) for r in records]

    sft, dpo = pair
    report = select_alpha(sft, dpo, [0.5, 2.0], [{"instruction": "say hello", "dataset": "t"}],
                          tmp_path / "sel", scorer_factory=PreferHalf,
                          sampling=replace(GREEDY, max_new_tokens=2))
    assert report["best_alpha"] == 0.5 and report["tied_alphas"] == []
    assert [row["model"] is not None for row in report["rows"]] == [False, True, False]
    assert "best α = **0.5** (highest mean reward)" in (tmp_path / "sel" / "report.md").read_text()
