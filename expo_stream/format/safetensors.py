"""Reading safetensors files: header validation and memory-mapped tensor views.

The format: 8 bytes little-endian unsigned header length ``N``, ``N`` bytes of UTF-8 JSON (an
object; may be padded with spaces), then the data. Each JSON entry other than ``__metadata__``
is ``name -> {"dtype", "shape", "data_offsets": [begin, end]}`` with offsets relative to the data
start. Like the reference implementation we reject headers over 100 MB, duplicate names, unknown
dtypes, byte ranges that do not match ``prod(shape) * itemsize``, and offsets that overlap, leave
holes or do not cover the data exactly. The whole header is validated before any view is handed
out, so nothing downstream reads past the mapping.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import system
from ..errors import FormatError
from .dtypes import ITEMSIZE
from .files import InputFile

MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: ``file`` plus absolute byte range ``[start, end)`` in that file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: InputFile
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A validated header: tensors in file order and the string metadata."""

    file: InputFile
    data_start: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Duplicate(Exception):
    pass


def parse_header(file: InputFile, prefix: bytes, file_size: int) -> Header:
    """Validate a safetensors header.

    Args:
        file: the file, named in errors.
        prefix: the file's first bytes; at least ``8 + N`` of them unless the file is shorter.
        file_size: the file's size in bytes.

    Returns:
        The validated :class:`Header`.

    Raises:
        FormatError: for any violation of the format, naming the file and the tensor.

    Example:
        >>> parse_header(InputFile("local", "x", 10, "0"), b"\\x02" + b"\\0" * 7 + b"{}", 10).tensors
        ()
    """
    if file_size < 8 or len(prefix) < 8:
        raise FormatError(f"{file}: file of {file_size} bytes is too short for a safetensors header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"{file}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise FormatError(f"{file}: header length {n} runs past the end of the {file_size}-byte file")
    raw = prefix[8 : 8 + n]
    if len(raw) != n:
        raise FormatError(f"{file}: header truncated: {len(raw)} of {n} bytes readable")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{file}: header is not UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _Duplicate as dup:
        raise FormatError(f"{file}: header names tensor {dup.args[0]!r} twice") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{file}: header is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{file}: header is a JSON {type(obj).__name__}, not an object")

    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FormatError(f"{file}: __metadata__ must map strings to strings")

    data_start = 8 + n
    data_len = file_size - data_start
    entries = []
    for name, entry in obj.items():
        entries.append(_tensor_entry(file, name, entry, data_start))
    entries.sort(key=lambda t: (t.start, t.end))
    cursor = data_start
    for t in entries:
        if t.start != cursor:
            what = "overlaps the previous tensor" if t.start < cursor else "leaves a hole before it"
            raise FormatError(
                f"{file}: invalid offsets for tensor {t.name!r}: begins at data byte "
                f"{t.start - data_start} and {what} (expected {cursor - data_start})"
            )
        cursor = t.end
    if cursor != file_size:
        if cursor > file_size:
            raise FormatError(
                f"{file}: tensor data runs past the end of the file "
                f"({cursor - data_start} bytes declared, {data_len} present; truncated?)"
            )
        raise FormatError(
            f"{file}: {file_size - cursor} bytes after the last tensor are not covered by the header"
        )
    in_file_order = tuple(entries)
    return Header(file=file, data_start=data_start, tensors=in_file_order, metadata=dict(metadata))


def _tensor_entry(file: InputFile, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise FormatError(f"{file}: entry for tensor {name!r} is not an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:  # a list here once crashed the lookup
        raise FormatError(f"{file}: tensor {name!r} has unknown dtype {dtype!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape  # bool is an int subclass: exclude it
    ):
        raise FormatError(
            f"{file}: tensor {name!r} has invalid shape {shape!r} (need non-negative integers)"
        )
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise FormatError(f"{file}: tensor {name!r} has invalid data_offsets {offsets!r}")
    numel = 1
    for dim in shape:
        numel *= dim  # Python ints: no overflow to check, the size comparison bounds it
    expected = numel * ITEMSIZE[dtype]
    begin, end = offsets
    if end - begin != expected:
        raise FormatError(
            f"{file}: tensor {name!r} is {dtype}{shape}, {expected} bytes, "
            f"but its data_offsets span {end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), file, data_start + begin, data_start + end)


def encode_header(tensors, metadata: dict[str, str] | None = None) -> bytes:
    """The header for ``(name, dtype, shape)`` tensors laid out back to back in that order.

    Length prefix and JSON padded with spaces to a multiple of 8, as the reference writer does;
    ``__metadata__`` defaults to `{"format": "pt"!r}` (what transformers writes).
    """
    entries: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        size = ITEMSIZE[dtype]
        for dim in shape:
            size *= dim
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    body = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def read_header(path: Path) -> Header:
    """Read and validate the header of the local safetensors file at ``path`` (read-only)."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES:
                    head += f.read(n)
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, expected a .safetensors file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_header(InputFile.local(path, stat), head, size)


class MappedFile:
    """A read-only memory map of one safetensors file, handing out NumPy views of byte ranges.

    The map is shared by every tensor of the file; :meth:`release` drops pages a caller has
    finished with so that resident memory stays bounded while a large file streams through.
    """

    def __init__(self, path: Path):
        self.path = path
        fd = system.open_for_reading(path)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
        finally:
            os.close(fd)
        self.size = size

    def view(self, start: int, end: int, dtype: np.dtype) -> np.ndarray:
        """Zero-copy read-only array over bytes ``[start, end)``."""
        if not (0 <= start <= end <= self.size):
            raise FormatError(f"{self.path}: byte range [{start}, {end}) outside the file")
        if start == end:
            return np.empty(0, dtype=dtype)
        return np.frombuffer(self._map, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start)

    def prefetch(self, start: int, end: int) -> None:
        """Ask the kernel to start reading ``[start, end)`` now (asynchronous readahead)."""
        self._advise(start, end, "WILLNEED")

    def release(self, start: int, end: int) -> None:
        """Drop this process's pages for ``[start, end)``; the data stays readable from disk."""
        self._advise(start, end, "DONTNEED")

    def _advise(self, start: int, end: int, advice: str) -> None:
        if self._map is None:
            return
        page = mmap.PAGESIZE
        lo = start - start % page
        hi = min(end, self.size)
        if hi > lo:
            system.advise(self._map, advice, lo, hi - lo)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                # A view is still alive somewhere; the map closes when it is collected.
                pass
            self._map = None
