"""RLHF-V corrected segments: the token diff, its character spans, token weights."""

from __future__ import annotations

import pytest

from expo_stream.multimodal.segments import char_spans, corrected_token_ranges, token_weights


@pytest.mark.parametrize("chosen, rejected, expected", [
    # one token replaced between unchanged blocks: both sides marked
    ([1, 2, 3, 4, 9, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], ([(4, 5)], [(4, 5)])),
    # a replacement of different lengths
    ([1, 2, 3, 10, 11, 6, 7, 8], [1, 2, 3, 5, 6, 7, 8], ([(3, 5)], [(3, 4)])),
    # a pure deletion from rejected, a pure insertion into chosen: not corrected, weight 1
    ([1, 2, 3, 6, 7, 8], [1, 2, 3, 5, 6, 7, 8], ([], [])),
    ([1, 2, 3, 5, 6, 7, 8], [1, 2, 3, 6, 7, 8], ([], [])),
    # a 2-token coincidence inside a rewrite is not an unchanged block: one segment, not two
    ([1, 2, 3, 20, 21, 5, 6, 22, 7, 8, 9], [1, 2, 3, 30, 5, 6, 31, 32, 7, 8, 9],
     ([(3, 8)], [(3, 8)])),
    # trailing replacement (the end sentinel closes it)
    ([1, 2, 3, 4], [1, 2, 3, 5, 6], ([(3, 4)], [(3, 5)])),
    # nothing in common
    ([1, 2], [3, 4], ([(0, 2)], [(0, 2)])),
    ([], [], ([], [])),
])
def test_corrected_token_ranges(chosen, rejected, expected):
    assert corrected_token_ranges(chosen, rejected) == expected


def test_spans_and_weights_by_hand():
    # "The cat is red ." with offsets as a tokenizer reports them (spaces not in tokens)
    offsets = [(0, 3), (4, 7), (8, 10), (11, 14), (14, 15)]
    assert char_spans(offsets, [(3, 4)]) == [(11, 14)]
    assert token_weights(offsets, [(11, 14)], 2.0) == [1.0, 1.0, 1.0, 2.0, 1.0]
    # a span covering part of a token marks the whole token; special tokens (0, 0) never
    assert token_weights(offsets + [(0, 0)], [(5, 9)], 3.0) == [1.0, 3.0, 3.0, 1.0, 1.0, 1.0]


def test_tiny_tokenizer_marks_the_colour_word():
    pytest.importorskip("transformers")
    from expo_stream.multimodal.data import segments
    from expo_stream.multimodal.tiny import tiny_tokenizer

    chosen = "The image shows a square. The square is green on a plain background."
    rejected = "The image shows a square. The square is blue on a plain background."
    c, r = segments(tiny_tokenizer(), chosen, rejected)
    assert [chosen[a:b] for a, b in c] == ["green"]
    assert [rejected[a:b] for a, b in r] == ["blue"]


def test_a_slow_tokenizer_is_refused_by_name():
    from expo_stream.errors import UsageError
    from expo_stream.multimodal.segments import tokenize_with_offsets

    class Slow:
        is_fast = False
        name_or_path = "open_llama_3b"

    with pytest.raises(UsageError, match="open_llama_3b: corrected segments need a fast tokenizer"):
        tokenize_with_offsets(Slow(), "text")

