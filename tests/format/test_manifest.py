"""The manifest (expo_stream/format/manifest.py): digests of written ranges prove a shard."""

from __future__ import annotations

import json

import pytest
import xxhash

from expo_stream.errors import FormatError
from expo_stream.format.manifest import (
    MANIFEST_NAME, ShardRecord, check_file, differing_ranges, digest, read_manifest,
    write_manifest,
)

DATA = bytes(range(256)) * 4


def record_of(data: bytes, step: int = 100) -> dict:
    record = ShardRecord(len(data))
    for lo in range(0, len(data), step):
        record.ranges.append((lo, min(step, len(data) - lo), digest(data[lo:lo + step])))
    record.ranges.reverse()  # to_json sorts them
    return record.to_json()


def test_digest_is_xxh3_128_hex_of_bytes_or_views():
    import numpy as np

    assert digest(b"abc") == xxhash.xxh3_128_hexdigest(b"abc") and len(digest(b"abc")) == 32
    assert digest(np.frombuffer(b"abc", np.uint8)) == digest(b"abc")
    assert digest(b"abc") != digest(b"abd")


def test_write_read_round_trip(tmp_path):
    shards = {"model.safetensors": record_of(DATA)}
    write_manifest(tmp_path, "f" * 64, shards)
    assert read_manifest(tmp_path) == {"fingerprint": "f" * 64, "shards": shards}
    assert shards["model.safetensors"]["ranges"][0][0] == 0  # sorted by offset
    write_manifest(tmp_path, "g", {})  # replaced whole, no temporary left beside it
    assert read_manifest(tmp_path) == {"fingerprint": "g", "shards": {}}
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]


def test_no_manifest_is_none(tmp_path):
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"shards": []}', ""])
def test_a_corrupt_manifest_is_an_error_naming_the_file(tmp_path, text):
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(FormatError) as info:
        read_manifest(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / MANIFEST_NAME}: ")


def test_check_file_accepts_the_recorded_bytes(tmp_path):
    path = tmp_path / "shard"
    path.write_bytes(DATA)
    assert check_file(path, record_of(DATA)) is None


@pytest.mark.parametrize("position", [0, 99, 100, 517, len(DATA) - 1])
def test_check_file_detects_one_changed_byte(tmp_path, position):
    path = tmp_path / "shard"
    changed = bytearray(DATA)
    changed[position] ^= 0x01
    path.write_bytes(bytes(changed))
    record = record_of(DATA)
    lo = position // 100 * 100
    problem = check_file(path, record)
    assert problem == f"bytes [{lo}, {min(lo + 100, len(DATA))}) differ from the recorded digest"
    assert differing_ranges(path, record) == [(lo, min(100, len(DATA) - lo))]


def test_check_file_detects_size_missing_file_and_uncovered_bytes(tmp_path):
    path = tmp_path / "shard"
    assert check_file(path, record_of(DATA)) == "missing"
    path.write_bytes(DATA + b"x")
    assert check_file(path, record_of(DATA)) == f"size {len(DATA) + 1} != recorded {len(DATA)}"
    path.write_bytes(DATA)
    partial = record_of(DATA)
    partial["ranges"] = partial["ranges"][:-1]
    assert check_file(path, partial) == f"recorded ranges cover 1000 of {len(DATA)} bytes"


def test_differing_ranges_lists_all_unless_first_only(tmp_path):
    path = tmp_path / "shard"
    changed = bytearray(DATA)
    changed[5] ^= 1
    changed[305] ^= 1
    path.write_bytes(bytes(changed))
    assert differing_ranges(path, record_of(DATA)) == [(0, 100), (300, 100)]
    assert differing_ranges(path, record_of(DATA), first_only=True) == [(0, 100)]


def test_manifest_file_is_plain_json(tmp_path):
    write_manifest(tmp_path, "x", {"a": record_of(DATA[:10])})
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["shards"]["a"]["size"] == 10
