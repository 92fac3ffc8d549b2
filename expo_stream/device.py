"""Which torch device the integrations (generation, scoring, multimodal training) run on."""

from __future__ import annotations


def pick_device(device: str | None = None) -> str:
    """``device`` as given (``cuda:1``, ``cpu``...), else CUDA where torch sees a GPU, else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
