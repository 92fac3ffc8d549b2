"""DDPO (RLHF-V): batches with per-token weights, sequence scores, and the loss.

A pair is one prompt (text with ``<image>``, expanded by the processor to one token per image
feature) and two responses. Each sequence is ``prompt + response + eos``, padded on the right
only, so a response is contiguous and directly follows its prompt. Responses are tokenized
without special tokens: no BOS inside a response.

Token ``t`` of a sequence is predicted by the logits at ``t - 1``; :func:`token_logps` gathers
exactly those. The score of a response (RLHF-V eq. 5) is

    s = Σ_t w_t log p(y_t) / Σ_t w_t      (reduction "mean")
    s = Σ_t w_t log p(y_t)                 (reduction "sum", the released code's variant)

over response tokens, w_t = γ on corrected-segment tokens and 1 elsewhere; with γ = 1 and "sum"
this is the plain DPO sequence log-probability. The loss is

    -log σ(β [(s_π,w − s_ref,w) − (s_π,l − s_ref,l)])

and the rewards are β (s_π − s_ref). Scores, rewards and the loss are computed in float64: with
policy == reference every difference is exactly 0 and the loss exactly log 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError, UsageError
from .model import num_image_tokens
from .segments import token_weights, tokenize_with_offsets

REDUCTIONS = ("mean", "sum")
LLAVA_PROMPT = "USER: <image>\n{question} ASSISTANT:"


@dataclass
class Encoded:
    """One preference pair as token ids and weights (weights cover the response ids)."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    chosen_weights: list[float]
    rejected_ids: list[int]
    rejected_weights: list[float]
    pixel_values: object  # torch.Tensor [3, H, W]


def prompt_text(tokenizer, question: str) -> str:
    """One user turn with the image first, through the chat template (LLaVA-1.5's if none)."""
    content = f"<image>\n{question}"
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
    text = LLAVA_PROMPT.format(question=question)
    return (tokenizer.bos_token or "") + text


def encode_prompt(processor, config, question: str, image, *, max_prompt_length: int = 256,
                  sample_id: str = "?"):
    """Prompt ids (image tokens expanded) and pixel values; checks the image-token count.

    ``max_prompt_length`` bounds the text tokens; the question is cut to fit, the image tokens
    are never cut (cutting them would misalign features and tokens).

    Raises:
        FormatError: the prompt's image tokens do not match the vision tower's features.
    """
    tokenizer = processor.tokenizer
    overhead = len(tokenizer(prompt_text(tokenizer, ""), add_special_tokens=False)["input_ids"])
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    budget = max(0, max_prompt_length - overhead)
    if len(q_ids) > budget:
        question = tokenizer.decode(q_ids[:budget])
    enc = processor(text=prompt_text(tokenizer, question), images=image.convert("RGB"),
                    add_special_tokens=False, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    expected = num_image_tokens(config)
    found = sum(1 for i in ids if i == config.image_token_id)
    if found != expected:
        raise FormatError(f"sample {sample_id}: the prompt has {found} image tokens but the vision "
                          f"tower gives {expected} features per image")
    return ids, enc["pixel_values"][0]


def encode_response(tokenizer, text: str, spans, gamma: float, max_length: int = 256):
    """Response ids (no special tokens, then EOS) and their weights, cut to ``max_length``."""
    ids, offsets = tokenize_with_offsets(tokenizer, text)
    ids.append(tokenizer.eos_token_id)
    weights = token_weights(offsets, [tuple(s) for s in spans], gamma) + [1.0]
    return ids[:max_length], weights[:max_length]


def encode(sample: dict, processor, config, *, gamma: float, max_prompt_length: int = 256,
           max_response_length: int = 256) -> Encoded:
    """A preprocessed row (:mod:`.data`) to an :class:`Encoded` pair."""
    prompt_ids, pixels = encode_prompt(processor, config, sample["prompt"], sample["image"],
                                       max_prompt_length=max_prompt_length, sample_id=sample["id"])
    tok = processor.tokenizer
    c_ids, c_w = encode_response(tok, sample["chosen"], sample["chosen_segments"], gamma,
                                 max_response_length)
    r_ids, r_w = encode_response(tok, sample["rejected"], sample["rejected_segments"], gamma,
                                 max_response_length)
    return Encoded(sample["id"], prompt_ids, c_ids, c_w, r_ids, r_w, pixels)


def collate(items: list[Encoded], pad_id: int) -> dict:
    """Rows ``chosen_0 … chosen_{B-1}, rejected_0 … rejected_{B-1}``, right-padded.

    ``weights[i, t]`` is the weight of token ``t`` of row ``i`` if it is a response token, else 0.
    """
    import torch

    seqs, weights = [], []
    for side in ("chosen", "rejected"):
        for it in items:
            resp, w = getattr(it, f"{side}_ids"), getattr(it, f"{side}_weights")
            seqs.append(it.prompt_ids + resp)
            weights.append([0.0] * len(it.prompt_ids) + w)
    batch = pad_rows(seqs, weights, pad_id)
    pixels = torch.stack([it.pixel_values for it in items])
    return {**batch, "pixel_values": torch.cat([pixels, pixels]), "ids": [it.id for it in items]}


def pad_rows(seqs: list[list[int]], weights: list[list[float]], pad_id: int) -> dict:
    """Token rows and their per-token weights, right-padded into ``input_ids``,
    ``attention_mask`` and ``weights`` tensors (padding: ``pad_id``, mask 0, weight 0)."""
    import torch

    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    w = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (s, ws) in enumerate(zip(seqs, weights)):
        input_ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
        w[i, :len(s)] = torch.tensor(ws)
    return {"input_ids": input_ids, "attention_mask": mask, "weights": w}


def token_logps(logits, input_ids):
    """``out[i, t] = log p(input_ids[i, t] | input_ids[i, :t])`` for t ≥ 1; ``out[:, 0] = 0``."""
    import torch

    logits = logits[:, :-1].float()
    target = input_ids[:, 1:]
    picked = torch.gather(logits, 2, target.unsqueeze(-1)).squeeze(-1)
    lp = picked - torch.logsumexp(logits, dim=-1)
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)


def sequence_scores(logps, weights, reduction: str = "mean"):
    """Weighted response scores in float64 (see the module docstring)."""
    if reduction not in REDUCTIONS:
        raise UsageError(f"--reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    w = weights.double()
    total = (w * logps.double()).sum(-1)
    return total / w.sum(-1) if reduction == "mean" else total


def scores(net, batch: dict, reduction: str = "mean"):
    """One forward pass over a collated batch; float64 score per row."""
    out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=batch["pixel_values"])
    return sequence_scores(token_logps(out.logits, batch["input_ids"]), batch["weights"], reduction)


def ddpo_loss(policy, reference, beta: float):
    """Per-pair loss and rewards from float64 scores ``[chosen…, rejected…]``.

    Returns ``(loss, chosen_rewards, rejected_rewards)``, each of shape ``[B]``.
    """
    import torch.nn.functional as F

    half = policy.shape[0] // 2
    chosen = beta * (policy[:half] - reference[:half])
    rejected = beta * (policy[half:] - reference[half:])
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()
