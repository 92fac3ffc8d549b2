"""Verifiable instructions in the style of IFEval, written for this benchmark.

A :class:`Constraint` is a kind and an argument; it renders as one sentence appended to a real
instruction and checks a response with code, so no judge model is needed. The kinds:

============  ==========================================  =====================================
kind          sentence                                    satisfied when (strict)
============  ==========================================  =====================================
lowercase     all lowercase letters                       the response has a letter and no
                                                          uppercase letter
max_words     fewer than N words                          whitespace-split words < N
no_commas     no commas                                   no ``,`` (nor the full-width ``，``)
ends_with     end with the exact phrase P                 the stripped response ends with P
quoted        wrap the answer in double quotes            stripped, it starts and ends with ``"``
bullets       exactly K markdown bullet points            exactly K lines start with ``* ``/``- ``
keyword       include the word W                          W occurs as a whole word (any case)
starts_with   start with the word W                       the first word, quotes and punctuation
                                                          aside, is W (any case)
============  ==========================================  =====================================

**Loose** checking (IFEval's idea, our own variants) also accepts a response when the check
passes on one of: the response with markdown emphasis (``*``, ``_``, ``#`` runs that are not
bullets) removed, without its first line, or without its last line — forgiving a preamble
("Sure, here it is:") or a sign-off. The reward of a response is the fraction of its prompt's
constraints satisfied, strict or loose.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

KINDS = ("lowercase", "max_words", "no_commas", "ends_with", "quoted", "bullets", "keyword",
         "starts_with")

# Arguments are drawn from these (deterministically, per prompt: see ``attach``).
WORD_LIMITS = (15, 20, 30)
END_PHRASES = ("Is there anything else I can help with?", "That is all.", "Hope this helps!")
BULLET_COUNTS = (2, 3, 4)
KEYWORDS = ("important", "simple", "example", "because", "people", "time")
FIRST_WORDS = ("Sure", "Yes", "Well", "Here", "Certainly", "First")

# Pairs that cannot (or can hardly) hold together; never attached to one prompt.
CONFLICTS = {
    frozenset(("quoted", "starts_with")), frozenset(("quoted", "ends_with")),
    frozenset(("quoted", "bullets")), frozenset(("lowercase", "ends_with")),
    frozenset(("bullets", "max_words")),
}

_BULLET = re.compile(r"^\s*[*\-]\s+\S")


@dataclass(frozen=True)
class Constraint:
    """One verifiable instruction: ``kind`` (one of :data:`KINDS`) and its argument."""

    kind: str
    arg: str | int | None = None

    def sentence(self) -> str:
        """The instruction text for this constraint (appended to the prompt)."""
        return {
            "lowercase": "Your entire answer must be in lowercase letters; no capital letters at all.",
            "max_words": f"Answer in fewer than {self.arg} words.",
            "no_commas": "Do not use any commas in your answer.",
            "ends_with": f'End your answer with the exact phrase "{self.arg}" and nothing after it.',
            "quoted": "Wrap your entire answer in double quotation marks.",
            "bullets": (f"Your answer must contain exactly {self.arg} bullet points, each on its "
                        "own line starting with '* '."),
            "keyword": f'Include the word "{self.arg}" in your answer.',
            "starts_with": f'Start your answer with the word "{self.arg}".',
        }[self.kind]

    def check(self, response: str) -> bool:
        """Whether ``response`` satisfies this constraint, strictly."""
        return CHECKERS[self.kind](response, self.arg)

    def check_loose(self, response: str) -> bool:
        """Whether the response or one of its loose variants (module doc) satisfies it."""
        return any(self.check(v) for v in loose_variants(response))

    def as_dict(self) -> dict:
        return {"kind": self.kind, "arg": self.arg}


def is_lowercase(response: str, _=None) -> bool:
    return any(c.isalpha() for c in response) and not any(c.isupper() for c in response)


def has_fewer_words(response: str, limit: int) -> bool:
    return len(response.split()) < int(limit)


def has_no_commas(response: str, _=None) -> bool:
    return "," not in response and "，" not in response


def ends_with_phrase(response: str, phrase: str) -> bool:
    return response.strip().endswith(phrase)


def is_quoted(response: str, _=None) -> bool:
    text = response.strip()
    return len(text) >= 2 and text[0] == '"' and text[-1] == '"'


def count_bullets(response: str) -> int:
    return sum(1 for line in response.splitlines() if _BULLET.match(line))


def has_bullets(response: str, count: int) -> bool:
    return count_bullets(response) == int(count)


def has_keyword(response: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", response, flags=re.IGNORECASE) is not None


def starts_with_word(response: str, word: str) -> bool:
    words = response.split()
    if not words:
        return False
    first = words[0].strip("\"'“”‘’*_#([{")
    first = first.rstrip(".,;:!?\"'“”‘’*_)]}")
    return first.casefold() == str(word).casefold()


CHECKERS = {
    "lowercase": is_lowercase, "max_words": has_fewer_words, "no_commas": has_no_commas,
    "ends_with": ends_with_phrase, "quoted": is_quoted, "bullets": has_bullets,
    "keyword": has_keyword, "starts_with": starts_with_word,
}


def _without_emphasis(text: str) -> str:
    # Bullet markers ("* " at a line start) are kept; emphasis runs elsewhere go.
    kept = []
    for line in text.splitlines():
        m = _BULLET.match(line)
        head = line[:m.end() - 1] if m else ""
        kept.append(head + re.sub(r"[*_#]+", "", line[len(head):]))
    return "\n".join(kept)


def loose_variants(response: str) -> list[str]:
    """The response, without emphasis, without its first line, without its last line (and the
    emphasis-free versions of those two)."""
    lines = response.strip().splitlines()
    variants = [response]
    if len(lines) > 1:
        variants += ["\n".join(lines[1:]), "\n".join(lines[:-1])]
    return variants + [_without_emphasis(v) for v in variants]


def _random_arg(kind: str, rng: random.Random):
    return {
        "max_words": lambda: rng.choice(WORD_LIMITS), "ends_with": lambda: rng.choice(END_PHRASES),
        "bullets": lambda: rng.choice(BULLET_COUNTS), "keyword": lambda: rng.choice(KEYWORDS),
        "starts_with": lambda: rng.choice(FIRST_WORDS),
    }.get(kind, lambda: None)()


def attach(key: str, count: int = 2) -> list[Constraint]:
    """``count`` compatible constraints for the prompt named ``key``, the same on every run.

    ``key`` seeds the choice (string seeds are hashed with SHA-512 by ``random``, so the choice
    does not depend on PYTHONHASHSEED).
    """
    rng = random.Random(f"constraints:{key}")
    chosen: list[str] = []
    for kind in rng.sample(KINDS, len(KINDS)):
        if all(frozenset((kind, k)) not in CONFLICTS for k in chosen):
            chosen.append(kind)
        if len(chosen) == count:
            break
    return [Constraint(kind, _random_arg(kind, rng)) for kind in chosen]


def with_constraints(instruction: str, constraints: list[Constraint]) -> str:
    """The instruction followed by one sentence per constraint."""
    return instruction.rstrip() + "\n\n" + " ".join(c.sentence() for c in constraints)


def reward(response: str, constraints: list[Constraint], loose: bool = False) -> float:
    """The fraction of ``constraints`` the response satisfies (strict, or loose)."""
    if not constraints:
        raise ValueError("a prompt without constraints has no verifiable reward")
    ok = [c.check_loose(response) if loose else c.check(response) for c in constraints]
    return sum(ok) / len(ok)


def from_dicts(rows: list[dict]) -> list[Constraint]:
    return [Constraint(r["kind"], r["arg"]) for r in rows]
