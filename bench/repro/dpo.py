"""On-policy preference pairs and plain DPO with full fine-tuning.

Pairs: several sampled responses per training prompt from the SFT model (the project's
``generate_outputs``, the ExPO paper's sampling), scored by the verifiable reward; the best and
the worst form a pair when their rewards differ (ties broken by the loose reward, then by
sample order).

DPO: the project's DDPO functions (``expo_stream.multimodal.ddpo``) with every token weight 1
and reduction "sum", which is plain DPO (that module's docstring). Each sequence is the chat-
templated prompt, then the response and EOS, right-padded; the reference log-probabilities are
computed once per pair (the reference is frozen) and shared by every data fraction.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from .constraints import reward
from .data import constraints_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPOConfig:
    """Hyper-parameters, the same for every data fraction (only the pairs differ); the values
    come from bench/repro.py's Plan, which records them with the results."""

    beta: float
    lr: float
    epochs: int
    batch_pairs: int
    max_response_tokens: int
    max_grad_norm: float = 1.0


def make_pairs(prompts: list[dict], samples: list[list[str]]) -> list[dict]:
    """(best, worst) per prompt among its samples, kept only when the strict rewards differ."""
    pairs = []
    for prompt, outs in zip(prompts, samples):
        cons = constraints_of(prompt)
        keyed = [(reward(o, cons), reward(o, cons, loose=True), -k, o) for k, o in enumerate(outs)]
        best, worst = max(keyed), min(keyed)
        if best[0] > worst[0]:
            pairs.append({"id": prompt["id"], "instruction": prompt["instruction"],
                          "chosen": best[3], "rejected": worst[3],
                          "chosen_reward": best[0], "rejected_reward": worst[0]})
    return pairs


def subset(pairs: list[dict], fraction: float, seed: int) -> list[dict]:
    """A seeded random ``fraction`` of the pairs (at least one batch's worth of one pair)."""
    count = max(1, round(fraction * len(pairs)))
    return random.Random(f"subset:{seed}:{fraction}").sample(pairs, count)


def _encode(tokenizer, pair: dict, max_response: int) -> tuple[list[int], list[int], list[int]]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": pair["instruction"]}],
                                           add_generation_prompt=True, tokenize=False)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def response(text):
        return (tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_response]

    return p, response(pair["chosen"]), response(pair["rejected"])


def collate(tokenizer, pairs: list[dict], max_response: int) -> dict:
    """Rows chosen_0…chosen_{B-1}, rejected_0…rejected_{B-1} with weight 1 on response tokens
    (the layout ``ddpo.collate`` uses, without images)."""
    from expo_stream.multimodal.ddpo import pad_rows

    seqs, weights = [], []
    encoded = [_encode(tokenizer, p, max_response) for p in pairs]
    for side in (1, 2):
        for enc in encoded:
            seqs.append(enc[0] + enc[side])
            weights.append([0.0] * len(enc[0]) + [1.0] * len(enc[side]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pad_rows(seqs, weights, pad)


def sequence_logps(model, batch: dict):
    """Summed response log-probabilities per row (float64), via the project's DDPO functions."""
    from expo_stream.multimodal.ddpo import sequence_scores, token_logps

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_scores(token_logps(logits, batch["input_ids"]), batch["weights"], "sum")


def reference_logps(model_dir: Path, pairs: list[dict], config: DPOConfig) -> dict:
    """``{pair id: (chosen logp, rejected logp)}`` under the frozen SFT model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = {}
    for start in range(0, len(pairs), config.batch_pairs):
        chunk = pairs[start:start + config.batch_pairs]
        with torch.no_grad():
            lp = sequence_logps(model, collate(tokenizer, chunk, config.max_response_tokens))
        half = len(chunk)
        for k, p in enumerate(chunk):
            out[p["id"]] = (float(lp[k]), float(lp[half + k]))
    return out


def train(sft_dir: Path, pairs: list[dict], reference: dict, out_dir: Path, config: DPOConfig,
          seed: int) -> dict:
    """Full fine-tuning of the SFT model with DPO on ``pairs``; saves a safetensors checkpoint
    (config and tokenizer included) in ``out_dir``. Returns a log of the run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from expo_stream.multimodal.ddpo import ddpo_loss

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    rng = random.Random(f"order:{seed}")
    steps, losses, margins, accuracies = 0, [], [], []
    started = time.time()
    for _ in range(config.epochs):
        order = rng.sample(pairs, len(pairs))
        for start in range(0, len(order), config.batch_pairs):
            chunk = order[start:start + config.batch_pairs]
            batch = collate(tokenizer, chunk, config.max_response_tokens)
            policy = sequence_logps(model, batch)
            ref = torch.tensor([reference[p["id"]][0] for p in chunk]
                               + [reference[p["id"]][1] for p in chunk], dtype=torch.float64)
            loss, chosen, rejected = ddpo_loss(policy, ref, config.beta)
            optimizer.zero_grad()
            loss.mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            steps += 1
            losses.append(loss.mean().item())
            margins.append(float((chosen - rejected).mean()))
            accuracies.append(float((chosen > rejected).double().mean()))
            log.info("dpo step %d: loss %.4f margin %.4f", steps, losses[-1], margins[-1])
    model.eval()
    model.config.use_cache = True
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"{out_dir}: DPO loss is not finite ({losses})")
    return {"pairs": len(pairs), "steps": steps, "seconds": time.time() - started,
            "loss_first": losses[0], "loss_last": losses[-1], "margin_last": margins[-1],
            "accuracy_last": accuracies[-1], "losses": losses}
