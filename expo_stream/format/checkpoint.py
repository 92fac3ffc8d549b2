"""A checkpoint: every tensor of a model, by name, across its safetensors shards.

Accepted forms: a directory holding ``model.safetensors`` or shards with
``model.safetensors.index.json``; or a single ``.safetensors`` file. Only headers are read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, UsageError
from .files import InputFile
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
        root: the local directory holding its ``config.json`` and side files (for a checkpoint
            streamed from the Hub, the cached copy of those small files).
        files: the safetensors files, in the order their tensors are listed.
        tensors: name -> where it lives; ordered by file, then by offset (on-disk order).
        config: the parsed ``config.json`` beside the weights, or ``{}``.
        name: how messages name it (the path, or ``org/name@revision``); default: ``root``.
    """

    root: Path
    files: tuple[InputFile, ...]
    tensors: dict[str, TensorInfo]
    config: dict
    name: str = ""

    def __str__(self) -> str:
        return self.name or str(self.root)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate every header of the local checkpoint at ``path``.

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


def read_index(index_path: Path) -> dict[str, str]:
    """The ``weight_map`` of a ``model.safetensors.index.json``: tensor name -> shard file name.

    Raises:
        FormatError: unparsable, no string-to-string ``weight_map``, or a shard name that is not
            a plain file name.
    """
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{index_path}: cannot parse index ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise FormatError(f"{index_path}: `weight_map` must map tensor names to file names")
    for name in dict.fromkeys(weight_map.values()):
        if Path(name).name != name:
            raise FormatError(f"{index_path}: shard name {name!r} is not a plain file name")
    return weight_map


def _from_index(root: Path, index_path: Path) -> Checkpoint:
    weight_map = read_index(index_path)
    shard_names = list(dict.fromkeys(weight_map.values()))
    for name in shard_names:
        if not (root / name).is_file():
            raise FormatError(f"{index_path}: shard {name!r} is missing from {root}")
    headers = [read_header(root / name) for name in shard_names]
    return assemble_checkpoint(root, str(root), headers, weight_map, index_path)


def _from_files(root: Path, files: list[Path]) -> Checkpoint:
    return assemble_checkpoint(root, str(root), [read_header(f) for f in files])


def assemble_checkpoint(root: Path, name: str, headers: list[Header],
                        weight_map: dict[str, str] | None = None,
                        index_where: object = None) -> Checkpoint:
    """A checkpoint from its files' validated headers, wherever they were read from.

    Args:
        root: the local directory of its config and side files.
        name: how messages name the checkpoint.
        headers: one per safetensors file, in index order.
        weight_map: the index's map, checked against the headers (``None``: no index).
        index_where: how errors name the index.

    Raises:
        FormatError: a tensor in two files, or an index that disagrees with the headers.
    """
    tensors: dict[str, TensorInfo] = {}
    for header in headers:
        for info in header.tensors:
            if info.name in tensors:
                raise FormatError(f"{header.file}: tensor {info.name!r} also appears in "
                                  f"{tensors[info.name].file.name}")
            tensors[info.name] = info
    checkpoint = Checkpoint(root=root, files=tuple(h.file for h in headers), tensors=tensors,
                            config=_read_config(root), name=name)
    if weight_map is None:
        return checkpoint
    for tensor, shard in weight_map.items():
        info = tensors.get(tensor)
        if info is None or info.file.name != shard:
            raise FormatError(f"{root / shard}: index lists tensor {tensor!r} but the shard lacks it")
    unlisted = [n for n in tensors if n not in weight_map]
    if unlisted:
        raise FormatError(f"{tensors[unlisted[0]].file}: tensor {unlisted[0]!r} is not in "
                          f"{getattr(index_where, 'name', index_where)}")
    return checkpoint


def _read_config(root: Path) -> dict:
    config = root / "config.json"
    if not config.is_file():
        return {}
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{config}: cannot parse ({exc})") from None
    return parsed if isinstance(parsed, dict) else {}
