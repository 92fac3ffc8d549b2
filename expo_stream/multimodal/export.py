"""``mm export``: a training run to a full LLaVA checkpoint the merge engine can read.

The LoRA adapters are merged into the start model's weights and the trained projector replaces
the start one; the result is written with ``save_pretrained`` (safetensors) plus the processor,
under a hidden name renamed into place when complete. Tensor names and dtypes match the start
model's, so ``expo-stream merge --sft RUN/start --dpo EXPORTED`` extrapolates it.
"""

from __future__ import annotations

from pathlib import Path

from ..format.writer import publish
from .model import load_trained


def export(run_dir: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Write the merged model of ``run_dir`` (or of one of its checkpoints) to ``out``."""
    adapter = Path(checkpoint) / "adapter" if checkpoint else None

    def write(path: Path) -> None:
        net, processor = load_trained(run_dir, adapter)
        net.save_pretrained(path)
        processor.save_pretrained(path)

    return publish(Path(out), write, inputs=[Path(run_dir)], overwrite=overwrite)
