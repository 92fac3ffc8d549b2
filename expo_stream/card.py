"""The model card (README.md) written into every merged output.

YAML front matter through ``huggingface_hub.ModelCardData`` (``base_model`` as the two inputs,
``base_model_relation: merge``, tags, ``library_name``); the body says what ExPO is, gives the α
schedule as a table per layer group, the command that made the model and the tool version.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .plan.planner import Plan
from .report import AlphaRow, schedule_rows
from .version import __version__

EXPO_PARAGRAPH = (
    "This model was made by **model extrapolation (ExPO)**: from a supervised fine-tuned "
    "checkpoint θ_sft and an aligned (DPO/RLHF) checkpoint θ_dpo of the same architecture, "
    "θ = θ_dpo + α(θ_dpo − θ_sft), which moves further along the alignment direction than the "
    "training did and is often better aligned than θ_dpo itself (Zheng et al., 2024, "
    "*Weak-to-Strong Extrapolation Expedites Alignment*, "
    "[arXiv:2404.16792](https://arxiv.org/abs/2404.16792)). Every element was computed exactly "
    "and rounded once (expo-stream's arithmetic contract)."
)


def model_card_text(plan: Plan, which: int, command: str | None) -> str:
    """The README.md text for output ``which`` of ``plan``.

    ``base_model`` lists the inputs' Hub repo ids (``MergeOptions.sft_name``/``dpo_name``);
    a local input is named by its directory name in the text and left out of the metadata, so
    a pushed card carries valid Hub metadata and no path of the machine that made it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    options = plan.options
    sft_name = options.sft_name or f"{_local_name(options.sft)} (local)"
    dpo_name = options.dpo_name or f"{_local_name(options.dpo)} (local)"
    data = ModelCardData(
        base_model=[n for n in (options.sft_name, options.dpo_name) if n] or None,
        base_model_relation="merge",
        tags=["merge", "expo", "model-extrapolation", "expo-stream"],
        library_name="transformers",
    )
    schedule = plan.schedules[which]
    table = "\n".join(_table_row(row) for row in schedule_rows(plan, which))
    body = f"""
# {schedule.label} extrapolation of {dpo_name}

{EXPO_PARAGRAPH}

- SFT (θ_sft): `{sft_name}`
- Aligned (θ_dpo): `{dpo_name}`

## α schedule

| tensors | α | decided by |
| --- | --- | --- |
{table}

## How it was made

```
{_without_local_paths(command) if command else "expo_stream.merge(...)"}
```

expo-stream {__version__}; the α of every tensor is in `expo_recipe.json`, shard digests in
`expo_manifest.json` (`expo-stream verify` checks them).
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def _local_name(path) -> str:
    path = Path(path)
    return path.parent.name if path.is_file() and path.suffix == ".safetensors" else path.name


def _without_local_paths(command: str) -> str:
    """The command line with each argument that is an absolute path, or names a local file or
    folder, cut to its last part."""
    words = shlex.split(command)
    return shlex.join(Path(w).name if len(w) > 1 and (Path(w).is_absolute() or Path(w).exists())
                      else w for w in words)


def _table_row(row: AlphaRow) -> str:
    what = (f"`{row.stack}` layers {row.first}–{row.last}" if row.stack is not None
            else f"{row.count} other tensor(s)" if row.alpha is not None
            else f"{row.count} tensor(s)")
    alpha = "—" if row.alpha is None else f"{row.alpha:g}"
    return f"| {what} | {alpha} | {row.why} |"
