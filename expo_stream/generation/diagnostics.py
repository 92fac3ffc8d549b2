"""Diagnostics for AlpacaEval-style output files (``instruction``/``output`` records).

Definitions (comparisons on text with whitespace collapsed and case folded):

- ``echo``: the output begins with the whole instruction;
- ``instruction_only``: an echo with nothing after the instruction but whitespace and
  punctuation (``instruction_only_verbatim``: nothing at all);
- ``empty``: the output is empty or whitespace;
- ``repetitive``: the output's most frequent word 4-gram occurs at least twice and, times 4,
  covers at least 30 % of its words;
- lengths are counted in whitespace-separated words.
"""

from __future__ import annotations

import json
import re
import statistics
import unicodedata
from collections import Counter
from pathlib import Path

from ..errors import FormatError

REPETITION_SHARE = 0.30


def read_records(path: str | Path) -> list:
    """The records of a JSON list or a JSON-lines file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise FormatError(f"{path}: not JSON or JSON lines ({exc})") from None


def load_outputs(path: str | Path) -> list[dict]:
    """AlpacaEval records (each with a string ``output``) from JSON or JSON lines."""
    rows = read_records(path)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("output"), str):
            raise FormatError(f"{path}: record {i} has no string `output`")
    return rows


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _punctuation_only(text: str) -> bool:
    return all(c.isspace() or unicodedata.category(c).startswith("P") for c in text)


def _without_final_punctuation(text: str) -> str:
    """An echo may end the instruction differently ("... a color." echoed as "... a color!!!")."""
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end]


def echo_rest(instruction: str, output: str) -> str | None:
    """The normalized text after an echoed instruction, or None if the output is no echo.

    The instruction's own final punctuation is not part of the comparison; the echo's is part
    of the rest.
    """
    full, o = _norm(instruction), _norm(output)
    i = _without_final_punctuation(full)
    if not i or not o.startswith(i):
        return None
    # Where the instruction's punctuation was dropped, the echo must end there too ("color."
    # is not echoed by "colorful"); without it, a continuation glued on is still an echo.
    if i != full and o[len(i):len(i) + 1].isalnum():
        return None
    return o[len(i):]


def is_repetitive(output: str) -> bool:
    words = output.split()
    if len(words) < 8:
        return False
    grams = Counter(tuple(words[k:k + 4]) for k in range(len(words) - 3))
    count = grams.most_common(1)[0][1]
    return count >= 2 and count * 4 >= REPETITION_SHARE * len(words)


def diagnose(rows: list[dict]) -> dict:
    """Counts and length statistics for a list of records (see module doc)."""
    echo = instruction_only = verbatim = empty = repetitive = 0
    lengths = []
    for row in rows:
        output = row["output"]
        rest = echo_rest(row.get("instruction", ""), output)
        if rest is not None:
            echo += 1
            if _punctuation_only(rest):
                instruction_only += 1
                verbatim += _norm(output) == _norm(row.get("instruction", ""))
        empty += output.strip() == ""
        repetitive += is_repetitive(output)
        lengths.append(len(output.split()))
    total = len(rows)
    return {
        "total": total, "echo": echo, "instruction_only": instruction_only,
        "instruction_only_verbatim": verbatim, "empty": empty, "repetitive": repetitive,
        "echo_rate": echo / total if total else 0.0,
        "repetition_rate": repetitive / total if total else 0.0,
        "length_words": {
            "mean": statistics.fmean(lengths) if lengths else 0.0,
            "median": statistics.median(lengths) if lengths else 0,
            "min": min(lengths, default=0), "max": max(lengths, default=0),
        },
    }


def strip_echo(rows: list[dict]) -> list[dict]:
    """Copies of ``rows`` with echoed instructions removed from the start of each output.

    An instruction echoed several times in a row is removed each time; instruction-only outputs
    become empty. Whitespace inside the echo may differ from the instruction's (it is matched
    word by word, ignoring case).
    """
    fixed = []
    for row in rows:
        row = dict(row)
        instruction, output = row.get("instruction", ""), row["output"]
        words = _without_final_punctuation(instruction).split()
        pattern = r"\s*" + r"\s+".join(re.escape(w) for w in words)
        while output and echo_rest(instruction, output) is not None:
            m = re.match(pattern, output, flags=re.IGNORECASE)
            rest = output[m.end():] if m else output[len(instruction):]
            # The echo's own closing punctuation ("!!!" right after it) goes with it.
            cut = 0
            while cut < len(rest) and unicodedata.category(rest[cut]).startswith("P"):
                cut += 1
            output = "" if _punctuation_only(rest) else rest[cut:].lstrip()
        row["output"] = output
        fixed.append(row)
    return fixed
