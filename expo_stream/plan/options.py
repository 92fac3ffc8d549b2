"""MergeOptions: everything a merge needs, built by the CLI, a recipe file or library callers.

One frozen model, so the CLI flags and the library cannot drift apart.

Recipe file (YAML), every key optional except the inputs and one α form::

    sft: path/to/sft            # or given on the command line
    dpo: path/to/dpo
    alpha: 0.3                  # or a list: one output model per value
    layer_alphas: [5, 10, 15]   # k contiguous layer groups (instead of alpha)
    per_layer: [...]            # one α per layer index (instead of alpha)
    non_layer_alpha: 5          # embeddings, final norm, lm_head
    rules:                      # regex on tensor names, first match wins, before all else
      - {match: "lm_head", alpha: 0.0}
    dtype: bf16                 # bf16 | fp16 | fp32; default: DPO's dtype per tensor
    max_shard_size: 5GB
    copy_unmatched: false
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UsageError
from ..format.dtypes import ALIASES
from ..kernels import check_alpha
from .schedule import Rule, Schedule

DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # "5GB", as transformers writes


@dataclass(frozen=True)
class MergeOptions:
    sft: Path  # a local checkpoint; with ``stream``, a Hub repo id ``org/name[@rev]`` too
    dpo: Path
    schedules: tuple[Schedule, ...]
    dtype: str | None = None  # safetensors name, None = DPO's dtype per tensor
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
    copy_unmatched: bool = False
    # The inputs' Hub repo ids, for the model card's base_model (local paths are never listed).
    sft_name: str | None = None
    dpo_name: str | None = None
    stream: bool = False  # read repo ids' weights from the Hub by range requests


def parse_alpha(text: str | float, what: str = "alpha") -> float:
    """One α from user text, as the float64 it parses to, checked against C6."""
    if isinstance(text, bool):
        raise UsageError(f"{what}: {text!r} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{what}: {text!r} is not a finite number")
    return check_alpha(value)


def parse_alpha_list(text: str | list | float, what: str) -> tuple[float, ...]:
    items = text if isinstance(text, list) else str(text).split(",")
    if not items or any(str(i).strip() == "" for i in items):
        raise UsageError(f"{what}: {text!r} must be comma-separated numbers")
    return tuple(parse_alpha(str(i).strip() if isinstance(i, str) else i, what) for i in items)


def parse_dtype(text: str | None) -> str | None:
    if text is None:
        return None
    name = ALIASES.get(str(text).lower())
    if name is None:
        raise UsageError(f"dtype {text!r}: choose bf16, fp16 or fp32")
    return name


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units, as transformers); ``"2GiB"`` binary."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise UsageError(f"max shard size {text!r}: use a number with an optional unit, e.g. 5GB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if value <= 0:
        raise UsageError(f"max shard size {text!r} must be positive")
    return value


def build_schedules(
    alpha: str | list | float | None = None,
    layer_alphas: str | list | None = None,
    per_layer: list | None = None,
    non_layer_alpha: str | float | None = None,
    rules: list | None = None,
) -> tuple[Schedule, ...]:
    """Schedules from flag- or recipe-style values; several α values give several schedules."""
    given = [x is not None for x in (alpha, layer_alphas, per_layer)]
    if sum(given) != 1:
        raise UsageError("give exactly one of --alpha, --layer-alphas or a recipe's per_layer")
    parsed_rules = tuple(_rule(r) for r in (rules or []))
    nla = None if non_layer_alpha is None else parse_alpha(non_layer_alpha, "non-layer alpha")
    if alpha is not None:
        if nla is not None:
            raise UsageError("--non-layer-alpha goes with --layer-alphas, not a uniform --alpha")
        values = parse_alpha_list(alpha, "alpha")
        if len(set(values)) != len(values):
            raise UsageError(f"alpha list {alpha!r} repeats a value")
        return tuple(Schedule(alpha=a, rules=parsed_rules) for a in values)
    if layer_alphas is not None:
        groups = parse_alpha_list(layer_alphas, "layer alphas")
        return (Schedule(layer_alphas=groups, non_layer_alpha=nla, rules=parsed_rules),)
    layers = parse_alpha_list(per_layer, "per_layer")
    return (Schedule(per_layer=layers, non_layer_alpha=nla, rules=parsed_rules),)


def _rule(entry: object) -> Rule:
    if not isinstance(entry, dict) or set(entry) != {"match", "alpha"}:
        raise UsageError(f"recipe rule {entry!r}: need exactly the keys `match` and `alpha`")
    try:
        re.compile(str(entry["match"]))
    except re.error as exc:
        raise UsageError(f"recipe rule /{entry['match']}/ is not a valid regex ({exc})") from None
    return Rule(str(entry["match"]), parse_alpha(entry["alpha"], f"rule /{entry['match']}/"))


_RECIPE_KEYS = {"sft", "dpo", "alpha", "layer_alphas", "per_layer", "non_layer_alpha", "rules",
                "dtype", "max_shard_size", "copy_unmatched", "sft_name", "dpo_name"}


def read_recipe(path: Path) -> dict:
    """A YAML recipe as a checked mapping (docs/recipes.md).

    ``sft``/``dpo`` that name a path relative to the recipe's own directory come back as that
    path; anything else (an absolute path, a Hub repo id) as written.

    Raises:
        UsageError: unreadable, not YAML, not a mapping, unknown keys; each naming ``path``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read recipe ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: recipe is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: recipe must be a mapping of keys to values")
    if data.get("tool") == "expo-stream" and isinstance(data.get("schedule"), dict):
        data = _from_resolved(data)
    unknown = set(data) - _RECIPE_KEYS
    if unknown:
        raise UsageError(f"{path}: unknown recipe keys {sorted(unknown)}; known: {sorted(_RECIPE_KEYS)}")
    for key in ("sft", "dpo", "sft_name", "dpo_name"):
        if key in data and not isinstance(data[key], str):
            raise UsageError(f"{path}: {key} must be a string, not {data[key]!r}")
    for key in ("sft", "dpo"):
        if key in data and not Path(data[key]).is_absolute():
            beside = path.parent / data[key]
            if beside.exists():
                data[key] = str(beside)
    return data


def _from_resolved(resolved: dict) -> dict:
    """The recipe an output's ``expo_recipe.json`` (what a merge resolved) describes: inputs,
    schedule, dtype and shard size, so that ``--recipe expo_recipe.json`` merges it again."""
    schedule = resolved["schedule"]
    data = {k: resolved[k] for k in ("sft", "dpo", "dtype", "max_shard_size", "copy_unmatched")
            if resolved.get(k) is not None}
    data.update({k: v for k, v in schedule.items() if k != "rules" and v is not None})
    if schedule.get("rules"):
        data["rules"] = schedule["rules"]
    return data


def load_recipe(path: Path, sft: Path | None = None, dpo: Path | None = None,
                data: dict | None = None) -> MergeOptions:
    """MergeOptions from a YAML recipe; ``sft``/``dpo`` given here override the recipe's.

    ``data`` is the recipe as :func:`read_recipe` returned it, if the caller has read it.
    """
    data = read_recipe(path) if data is None else data
    sft = sft or (Path(data["sft"]) if "sft" in data else None)
    dpo = dpo or (Path(data["dpo"]) if "dpo" in data else None)
    if sft is None or dpo is None:
        raise UsageError(f"{path}: the recipe or the command line must name both sft and dpo")
    try:
        schedules = build_schedules(
            alpha=data.get("alpha"), layer_alphas=data.get("layer_alphas"),
            per_layer=data.get("per_layer"), non_layer_alpha=data.get("non_layer_alpha"),
            rules=data.get("rules"),
        )
        dtype = parse_dtype(data.get("dtype"))
        max_shard_size = parse_size(data.get("max_shard_size", DEFAULT_MAX_SHARD_SIZE))
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return MergeOptions(
        sft=Path(sft), dpo=Path(dpo), schedules=schedules, dtype=dtype,
        max_shard_size=max_shard_size, copy_unmatched=bool(data.get("copy_unmatched", False)),
        sft_name=data.get("sft_name"), dpo_name=data.get("dpo_name"),
    )
