"""``mm export``: a training run to a full LLaVA checkpoint the merge engine can read.

The LoRA adapters are merged into the start model's weights and the trained projector replaces
the start one; the result is written with ``save_pretrained`` (safetensors) plus the processor,
under a hidden name renamed into place when complete. Tensor names and dtypes match the start
model's, so ``expo-stream merge --sft RUN/start --dpo EXPORTED`` extrapolates it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UsageError
from .model import load_trained


def export(run_dir: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Write the merged model of ``run_dir`` (or of one of its checkpoints) to ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: exists (use --overwrite to replace it)")
    adapter = Path(checkpoint) / "adapter" if checkpoint else None
    net, processor = load_trained(run_dir, adapter)
    staging = out.with_name(f".{out.name}.expo-partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        net.save_pretrained(staging)
        processor.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
