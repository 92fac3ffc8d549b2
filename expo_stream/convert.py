"""PyTorch ``.bin`` checkpoints, read safely and turned into safetensors for the merge.

This is the one place on the merge path that imports torch, and only when an input holds
``pytorch_model*.bin`` and no safetensors. Files are opened with ``torch.load(weights_only=True,
mmap=True)``: no pickled code runs, and tensors stay on disk until written out one by one.
The converted copy goes to a cache directory keyed by the source files' paths, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np

from .errors import FormatError, UsageError
from .format.checkpoint import INDEX_NAME, SIDE_FILES, shard_name
from .format.writer import publish, write_safetensors

BIN_INDEX = "pytorch_model.bin.index.json"


def bin_files(directory: Path) -> list[Path]:
    """The .bin weight files of a directory that has no safetensors, else []."""
    directory = Path(directory)
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return []
    index = directory / BIN_INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    single = directory / "pytorch_model.bin"
    return [single] if single.is_file() else []


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "expo-stream" / "converted"


def ensure_safetensors(directory: Path, cache: Path | None = None) -> Path:
    """``directory`` itself, or a converted safetensors copy when it holds only .bin weights."""
    files = bin_files(directory)
    if not files:
        return Path(directory)
    try:
        import torch
    except ImportError:
        raise UsageError(f"{directory}: PyTorch .bin checkpoint; reading it needs torch "
                         "(pip install torch), or convert it to safetensors first") from None
    key = hashlib.sha256(json.dumps(
        [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode()
    ).hexdigest()[:16]
    target = (cache or cache_root()) / key
    if (target / ".complete").is_file():
        return target
    def write(partial: Path) -> None:
        weight_map = {}
        for i, src in enumerate(files):
            try:
                state = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for a bad or unsafe pickle
                raise FormatError(f"{src}: cannot load safely with weights_only=True "
                                  f"({str(exc).splitlines()[0]})") from None
            name = shard_name(i, len(files))
            write_safetensors(partial / name, {k: _to_numpy(src, k, v) for k, v in state.items()})
            weight_map.update({k: name for k in state})
            del state
        if len(files) > 1:
            (partial / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}, indent=1))
        for side in ("config.json", *SIDE_FILES):
            if (Path(directory) / side).is_file():
                shutil.copy2(Path(directory) / side, partial / side)
        (partial / ".complete").write_text(str(Path(directory).resolve()))

    target.parent.mkdir(parents=True, exist_ok=True)
    publish(target, write, inputs=[Path(directory)])
    return target


def _to_numpy(src: Path, name: str, tensor) -> np.ndarray:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise FormatError(f"{src}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
