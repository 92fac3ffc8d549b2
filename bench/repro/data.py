"""Prompts: the 805 AlpacaEval instructions with verifiable constraints, split by seed.

The split is over instruction indices: a seeded shuffle, the first ``held_out`` for evaluation
and the rest for preference data, so no evaluated instruction is ever trained on.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from .constraints import Constraint, attach, with_constraints

SEED_FILE = "data/seed-results/expo_pred_dpo_train0.05.jsonl"


def shared_dir() -> Path:
    """../shared beside the checkout (EXPO_STREAM_SHARED names another), as tests/conftest.py."""
    given = os.environ.get("EXPO_STREAM_SHARED")
    return Path(given) if given else Path(__file__).resolve().parents[3] / "shared"


def load_instructions(path: Path | None = None) -> list[str]:
    """The AlpacaEval instructions, in file order."""
    path = Path(path) if path else shared_dir() / SEED_FILE
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["instruction"] for r in rows]


def split(n: int, held_out: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices) of ``range(n)``: disjoint, each sorted."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[held_out:]), sorted(order[:held_out])


def make_prompts(instructions: list[str], indices: list[int], per_prompt: int = 2) -> list[dict]:
    """Generation-ready records: the instruction with its constraints (chosen from its index)."""
    prompts = []
    for i in indices:
        cons = attach(str(i), per_prompt)
        prompts.append({"id": i, "instruction": with_constraints(instructions[i], cons),
                        "dataset": "alpaca_eval+constraints",
                        "constraints": [x.as_dict() for x in cons]})
    return prompts


def constraints_of(prompt: dict) -> list[Constraint]:
    return [Constraint(x["kind"], x["arg"]) for x in prompt["constraints"]]
