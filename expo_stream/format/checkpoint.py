"""A checkpoint: every tensor of a model, by name, across its safetensors shards.

Accepted forms: a directory holding ``model.safetensors`` or shards with
``model.safetensors.index.json``; or a single ``.safetensors`` file. Only headers are read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, UsageError
from .safetensors import Header, TensorInfo, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files besides the weights that make a model directory usable (copied from DPO by a merge,
# downloaded with a Hub checkpoint, kept by a .bin conversion); config.json is handled apart.
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
              "merges.txt", "chat_template.jinja", "chat_template.json",
              "preprocessor_config.json", "processor_config.json")


def shard_name(index: int, count: int) -> str:
    """transformers' name for shard ``index`` (from 0) of ``count``; one file is model.safetensors."""
    return SINGLE_NAME if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def group_shards(sizes: list[int], max_bytes: int | None) -> list[list[int]]:
    """Indices of consecutive items grouped greedily into shards of at most ``max_bytes``
    (an item larger than that gets a shard of its own), as transformers shards a checkpoint.

    >>> group_shards([3, 3, 3, 9, 1], 6)
    [[0, 1], [2], [3], [4]]
    """
    groups: list[list[int]] = [[]]
    size = 0
    for i, n in enumerate(sizes):
        if groups[-1] and max_bytes is not None and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


@dataclass(frozen=True)
class Checkpoint:
    """The validated tensor table of one checkpoint.

    Attributes:
        root: the directory (or the file's directory) the checkpoint lives in.
        files: the safetensors files, in the order their tensors are listed.
        tensors: name -> where it lives; ordered by file, then by offset (on-disk order).
        config: the parsed ``config.json`` beside the weights, or ``{}``.
    """

    root: Path
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]
    config: dict


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate every header of the checkpoint at ``path``.

    Raises:
        UsageError: the path does not exist.
        FormatError: an index or header is malformed, a shard is missing, a tensor is listed in
            the wrong shard or appears in two.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name == INDEX_NAME:
            return _from_index(path.parent, path)
        return _from_files(path.parent, [path])
    index = path / INDEX_NAME
    single = path / SINGLE_NAME
    if index.exists() and single.exists():
        raise FormatError(f"{path}: holds both {SINGLE_NAME} and {INDEX_NAME}; it is unclear which "
                          "is the model: remove one, or name the file to use")
    if index.exists():
        return _from_index(path, index)
    if single.exists():
        return _from_files(path, [single])
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return _from_files(path, found)
    if found:
        raise FormatError(
            f"{path}: {len(found)} .safetensors files but no {INDEX_NAME} to say how they combine"
        )
    if any(path.glob("pytorch_model*.bin")):
        raise FormatError(f"{path}: PyTorch .bin checkpoint; `expo-stream merge` converts it "
                          "(needs torch), or use expo_stream.convert.ensure_safetensors")
    raise FormatError(f"{path}: no model.safetensors, {INDEX_NAME} or .safetensors file found")


def _from_index(root: Path, index_path: Path) -> Checkpoint:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{index_path}: cannot parse index ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise FormatError(f"{index_path}: `weight_map` must map tensor names to file names")
    shard_names = list(dict.fromkeys(weight_map.values()))
    for name in shard_names:
        if Path(name).name != name:
            raise FormatError(f"{index_path}: shard name {name!r} is not a plain file name")
        if not (root / name).is_file():
            raise FormatError(f"{index_path}: shard {name!r} is missing from {root}")
    checkpoint = _from_files(root, [root / name for name in shard_names])
    for tensor, shard in weight_map.items():
        info = checkpoint.tensors.get(tensor)
        if info is None or info.path.name != shard:
            raise FormatError(f"{root / shard}: index lists tensor {tensor!r} but the shard lacks it")
    unlisted = [n for n in checkpoint.tensors if n not in weight_map]
    if unlisted:
        raise FormatError(
            f"{checkpoint.tensors[unlisted[0]].path}: tensor {unlisted[0]!r} is not in {index_path.name}"
        )
    return checkpoint


def _from_files(root: Path, files: list[Path]) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        header: Header = read_header(file)
        for info in header.tensors:
            if info.name in tensors:
                raise FormatError(
                    f"{file}: tensor {info.name!r} also appears in {tensors[info.name].path.name}"
                )
            tensors[info.name] = info
    return Checkpoint(root=root, files=tuple(files), tensors=tensors, config=_read_config(root))


def _read_config(root: Path) -> dict:
    config = root / "config.json"
    if not config.is_file():
        return {}
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{config}: cannot parse ({exc})") from None
    return parsed if isinstance(parsed, dict) else {}
