"""Scoring AlpacaEval-style outputs: a reward model, or DPO's implicit reward.

- ``RewardModelScorer``: any Hugging Face sequence-classification reward model; each record is a
  chat-templated user/assistant pair and its score is the raw logit.
- ``ImplicitRewardScorer``: β·(log π_dpo(y|x) − log π_sft(y|x)), the reward DPO trains
  implicitly, summed over the response tokens (and the end-of-sequence token) after the
  chat-templated prompt. It needs no model beyond the two being extrapolated.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import UsageError
from .diagnostics import load_outputs


def _chat(tokenizer, instruction: str, output: str | None) -> str:
    messages = [{"role": "user", "content": instruction}]
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("the scoring tokenizer has no chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=output is None)


class RewardModelScorer:
    def __init__(self, path: str | Path, device: str = "cpu", dtype=None, batch_size: int = 8):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..hub import resolve

        path = resolve(path).path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=dtype or torch.float32).to(device).eval()
        except OSError as exc:
            raise UsageError(f"{path}: cannot load reward model ({str(exc).splitlines()[0]})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.batch_size = device, batch_size

    def score(self, records: list[dict]) -> list[float]:
        import torch

        scores: list[float] = []
        for start in range(0, len(records), self.batch_size):
            batch = records[start:start + self.batch_size]
            texts = [_chat(self.tokenizer, r["instruction"], r["output"]) for r in batch]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.no_grad():
                logits = self.model(**enc).logits
            scores.extend(float(x) for x in logits[:, 0])
        return scores


class ImplicitRewardScorer:
    def __init__(self, sft: str | Path, dpo: str | Path, beta: float = 0.1, device: str = "cpu",
                 batch_size: int = 8):
        from .generate import load_model

        self.policy, self.tokenizer = load_model(dpo, device, "fp32")
        self.reference, _ = load_model(sft, device, "fp32")
        self.tokenizer.padding_side = "right"
        self.beta, self.device, self.batch_size = beta, device, batch_size

    def _response_logprobs(self, model, records: list[dict]) -> list[float]:
        import torch

        rows, spans = [], []
        for r in records:
            prompt = self.tokenizer(_chat(self.tokenizer, r["instruction"], None),
                                    add_special_tokens=False)["input_ids"]
            response = self.tokenizer(r["output"], add_special_tokens=False)["input_ids"]
            response = response + [self.tokenizer.eos_token_id]
            rows.append(prompt + response)
            spans.append((len(prompt), len(prompt) + len(response)))
        width = max(len(x) for x in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in rows], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in rows], device=self.device)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        out = []
        for b, (lo, hi) in enumerate(spans):
            # logits at position t predict token t+1
            targets = ids[b, lo:hi]
            out.append(float(logp[b, lo - 1:hi - 1].gather(-1, targets[:, None]).sum()))
        return out

    def score(self, records: list[dict]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(records), self.batch_size):
            batch = records[start:start + self.batch_size]
            pol = self._response_logprobs(self.policy, batch)
            ref = self._response_logprobs(self.reference, batch)
            scores.extend(self.beta * (p - q) for p, q in zip(pol, ref))
        return scores


def summarize(records: list[dict], scores: list[float], baseline: list[dict] | None = None,
              baseline_scores: list[float] | None = None) -> dict:
    """Mean score, average length (words) and, against a baseline, the win rate (ties half)."""
    summary = {
        "count": len(scores),
        "mean": statistics.fmean(scores) if scores else 0.0,
        "avg_length_words": statistics.fmean(len(r["output"].split()) for r in records) if records else 0.0,
    }
    if baseline is not None and baseline_scores is not None:
        by_instruction = {r["instruction"]: s for r, s in zip(baseline, baseline_scores)}
        wins = []
        for r, s in zip(records, scores):
            other = by_instruction.get(r["instruction"])
            if other is not None:
                wins.append(1.0 if s > other else 0.5 if s == other else 0.0)
        summary["win_rate"] = statistics.fmean(wins) if wins else None
        summary["compared"] = len(wins)
    return summary


def score_file(outputs: Path, scorer, baseline: Path | None = None) -> dict:
    records = load_outputs(outputs)
    scores = scorer.score(records)
    base_records = load_outputs(baseline) if baseline else None
    base_scores = scorer.score(base_records) if base_records else None
    return {
        "items": [{"instruction": r["instruction"], "score": s, "length_words": len(r["output"].split())}
                  for r, s in zip(records, scores)],
        "summary": summarize(records, scores, base_records, base_scores),
    }


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
