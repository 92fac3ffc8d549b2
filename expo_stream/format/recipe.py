"""The recipe file a merge writes beside its output, and what of it may leave the machine.

``expo_recipe.json`` records what made an output (inputs, schedule, every tensor's α). Locally it
names input directories by path, so ``verify`` can recompute from them; what is published names
a local input by its directory's name and the sha256 of each of its files instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .checkpoint import INDEX_NAME

RECIPE_NAME = "expo_recipe.json"


def publishable_recipe(recipe: dict) -> dict:
    """The recipe as it may leave this machine: a local input becomes its directory's name and
    the sha256 of each of its files (``sft_sha256``), never a path.

    Hub inputs (``org/name@commit``, no local path) stay as they are. Hashing reads the local
    inputs once; it runs when a model is pushed, not when it is merged.
    """
    out = dict(recipe)
    for key in ("sft", "dpo"):
        location = recipe.get(key)
        if not isinstance(location, str) or not Path(location).exists():
            continue
        root = Path(location)
        files = [root] if root.is_file() else sorted(
            p for p in root.iterdir() if p.suffix == ".safetensors" or p.name == INDEX_NAME)
        out[key] = root.name
        out[f"{key}_sha256"] = {p.name: _sha256(p) for p in files}
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**22):
            digest.update(block)
    return digest.hexdigest()
