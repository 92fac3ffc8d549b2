"""Header validation (expo_stream/format/safetensors.py) and checkpoint discovery."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from expo_stream.errors import FormatError, UsageError
from expo_stream.format.checkpoint import open_checkpoint
from expo_stream.format.safetensors import MappedFile, parse_header, read_header
from expo_stream.format.writer import save_checkpoint, write_safetensors


def raw_file(path, header: object, data: bytes = b"", *, text: bytes | None = None):
    body = text if text is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_reads_what_the_safetensors_library_writes(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64)}
    safetensors.numpy.save_file(arrays, tmp_path / "x.safetensors", metadata={"format": "pt"})
    header = read_header(tmp_path / "x.safetensors")
    assert {t.name: (t.dtype, t.shape) for t in header.tensors} == {
        "a": ("F32", (2, 3)), "b": ("I64", (4,))}
    assert header.metadata == {"format": "pt"}
    m = MappedFile(tmp_path / "x.safetensors")
    a = next(t for t in header.tensors if t.name == "a")
    assert m.view(a.start, a.end, np.dtype(np.float32)).tolist() == list(range(6))
    m.close()


def test_what_we_write_loads_in_the_safetensors_library(tmp_path):
    arrays = {"w": np.linspace(-1, 1, 10, dtype=np.float32).astype(ml_dtypes.bfloat16),
              "i": np.arange(3, dtype=np.int32)}
    write_safetensors(tmp_path / "y.safetensors", arrays)
    loaded = safetensors.numpy.load_file(tmp_path / "y.safetensors")
    assert loaded["i"].tolist() == [0, 1, 2]
    assert np.array_equal(loaded["w"].view(np.uint16), arrays["w"].view(np.uint16))


@pytest.mark.parametrize("header,data,fragment", [
    ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, b"\0" * 12, "overlaps"),
    ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}, b"\0" * 20, "hole"),
    ({"a": entry(offsets=(0, 8))}, b"\0" * 4, "past the end"),
    ({"a": entry(offsets=(0, 8))}, b"\0" * 12, "not covered"),
    ({"a": entry(dtype="Q7")}, b"\0" * 8, "unknown dtype"),
    ({"a": entry(dtype=[1, 2])}, b"\0" * 8, "unknown dtype"),  # found by bench/fuzz_header.py
    ({"a": entry(shape=(-2,))}, b"\0" * 8, "invalid shape"),
    ({"a": entry(shape=(2.0,))}, b"\0" * 8, "invalid shape"),
    ({"a": entry(shape=(3,))}, b"\0" * 8, "12 bytes"),
    ({"a": entry(offsets=(8, 0))}, b"\0" * 8, "invalid data_offsets"),
    ([1, 2], b"", "not an object"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
])
def test_malformed_headers_name_file_and_tensor(tmp_path, header, data, fragment):
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(FormatError, match=fragment) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_duplicate_names_rejected(tmp_path):
    text = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    path = raw_file(tmp_path / "dup.safetensors", None, b"\0" * 8, text=text)
    with pytest.raises(FormatError, match="'a' twice"):
        read_header(path)


@pytest.mark.parametrize("text,fragment", [(b"\xff\xfe{}", "UTF-8"), (b"{nope", "JSON")])
def test_header_not_utf8_or_json(tmp_path, text, fragment):
    path = raw_file(tmp_path / "t.safetensors", None, text=text)
    with pytest.raises(FormatError, match=fragment):
        read_header(path)


def test_header_length_beyond_file_and_over_limit(tmp_path):
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(FormatError, match="past the end"):
        read_header(p)
    p.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    with pytest.raises(FormatError, match="limit"):
        read_header(p)
    p.write_bytes(b"\1\0")
    with pytest.raises(FormatError, match="too short"):
        read_header(p)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_prefixes_raise_only_format_errors(blob):
    """Any byte string: a valid header or FormatError, never another exception."""
    try:
        header = parse_header("fuzz", blob, len(blob))
    except FormatError:
        return
    for t in header.tensors:
        assert header.data_start <= t.start <= t.end <= len(blob)


def _pair(tmp_path, shard):
    arrays = {f"t{i}": np.full(10, i, np.float32) for i in range(5)}
    save_checkpoint(tmp_path / "ck", arrays, shard)
    return tmp_path / "ck"


def test_checkpoint_forms(tmp_path):
    sharded = _pair(tmp_path, 80)
    ck = open_checkpoint(sharded)
    assert len(ck.files) == 3 and list(ck.tensors) == [f"t{i}" for i in range(5)]
    single = open_checkpoint(_pair(tmp_path / "s", None) / "model.safetensors")
    assert len(single.files) == 1


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        open_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no model.safetensors"):
        open_checkpoint(tmp_path / "empty")
    ck = _pair(tmp_path, 80)
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00003.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="'ghost'"):
        open_checkpoint(ck)
    del index["weight_map"]["ghost"]
    index["weight_map"]["t0"] = "model-00009-of-00009.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="missing"):
        open_checkpoint(ck)


def test_tensor_in_two_shards(tmp_path):
    ck = tmp_path / "two"
    ck.mkdir()
    write_safetensors(ck / "a.safetensors", {"x": np.zeros(2, np.float32)})
    write_safetensors(ck / "b.safetensors", {"x": np.zeros(2, np.float32)})
    (ck / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    with pytest.raises(FormatError, match="'x' also appears"):
        open_checkpoint(ck)
