"""RLHF-V's corrected segments: which tokens of a chosen/rejected pair differ.

RLHF-V (Yu et al. 2024) collects a rejected answer and a human-corrected chosen answer; its DDPO
loss weights the tokens of the corrected segments by γ. The released code finds those segments
with a token-level diff: ``difflib.SequenceMatcher`` over the two token-id lists, where only
matching blocks of at least :data:`MIN_MATCH` tokens count as unchanged (shorter coincidental
matches inside a rewritten sentence do not split a segment).

Between two consecutive unchanged blocks there is a gap in each response:

- both gaps non-empty (a **replacement**): the chosen gap is a corrected segment and the rejected
  gap the hallucinated segment it replaces; both are returned and get weight γ;
- only the chosen gap non-empty (an **insertion** into chosen) or only the rejected gap (a
  **deletion** from rejected): nothing was *corrected*, only added or removed, so these tokens
  stay at weight 1. This follows the released code, where only paired replacements get γ.

Segments are returned as token index ranges and, through a tokenizer's offset mapping, as
character spans of the text; the dataset stores the character spans so that any tokenizer with
offsets can turn them back into token weights (:func:`token_weights`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from ..errors import UsageError

MIN_MATCH = 3

Span = tuple[int, int]


def corrected_token_ranges(chosen: Sequence[int], rejected: Sequence[int],
                           min_match: int = MIN_MATCH) -> tuple[list[Span], list[Span]]:
    """Token ranges ``[start, end)`` of the corrected segments in chosen and in rejected.

    Example:
        >>> corrected_token_ranges([1, 2, 3, 4, 9, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8])
        ([(4, 5)], [(4, 5)])
    """
    matcher = difflib.SequenceMatcher(None, list(chosen), list(rejected), autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size >= min_match]
    blocks.append(difflib.Match(len(chosen), len(rejected), 0))  # the end sentinel
    ours, theirs = [], []
    i = j = 0
    for block in blocks:
        if block.a > i and block.b > j:
            ours.append((i, block.a))
            theirs.append((j, block.b))
        i, j = block.a + block.size, block.b + block.size
    return ours, theirs


def char_spans(offsets: Sequence[Span], ranges: Sequence[Span]) -> list[Span]:
    """Token ranges to character spans, using a tokenizer's offset mapping."""
    spans = []
    for start, end in ranges:
        lo, hi = offsets[start][0], offsets[end - 1][1]
        if hi > lo:
            spans.append((lo, hi))
    return spans


def token_weights(offsets: Sequence[Span], spans: Sequence[Span], gamma: float) -> list[float]:
    """Weight per token: γ where the token's characters overlap a corrected span, else 1.

    A token with an empty offset (a special token) is never corrected.
    """
    weights = []
    for lo, hi in offsets:
        hit = hi > lo and any(lo < s_end and s_start < hi for s_start, s_end in spans)
        weights.append(float(gamma) if hit else 1.0)
    return weights


def tokenize_with_offsets(tokenizer, text: str) -> tuple[list[int], list[Span]]:
    """Token ids (no special tokens) and character offsets; needs a fast tokenizer.

    Raises:
        UsageError: a slow (Python) tokenizer, which has no offset mapping.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{tokenizer.name_or_path}: corrected segments need a fast tokenizer "
                         "(offset mapping); install `tokenizers` and load it with use_fast=True")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
