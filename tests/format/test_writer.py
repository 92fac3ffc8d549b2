"""Writing outputs (expo_stream/format/writer.py): shard files, staging, publish, refusals,
write-then-rename (nothing at the destination until it is complete)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from expo_stream.errors import OutputError, UsageError
from expo_stream.format import writer
from expo_stream.format.writer import (
    WRITTEN_LIST, ShardFile, Staging, check_disjoint, check_output, lock_path, publish,
    replace_file, staging_path,
)

from ..helpers import DT


def test_shard_file_reserves_writes_header_and_positional_chunks(tmp_path):
    path = tmp_path / "s.safetensors"
    f = ShardFile(path, b"HEADER", 6 + 8)
    assert path.stat().st_size == 14  # sized up front
    f.pwrite(np.array([1.0, 2.0], DT["BF16"]), 10)  # a bf16 array, written as its bytes
    f.pwrite(b"abcd", 6)
    f.close()
    data = path.read_bytes()
    assert data[:6] == b"HEADER" and data[6:10] == b"abcd"
    assert data[10:] == np.array([1.0, 2.0], DT["BF16"]).tobytes()


def test_shard_file_errors_name_the_path(tmp_path):
    path = tmp_path / "missing" / "s.safetensors"
    with pytest.raises(OutputError, match=f"{path}: cannot create"):
        ShardFile(path, b"h", 1)


def test_staging_publishes_only_at_commit(tmp_path):
    out = tmp_path / "out"
    staging = Staging(out, [])
    staging.write_text("a/b.txt", "hello")
    assert not os.path.lexists(out)
    assert staging.path == staging_path(out.absolute()) and staging.path.name == ".out.expo-partial"
    assert lock_path(out.absolute()).exists()
    assert staging.commit() == out.absolute()
    assert (out / "a" / "b.txt").read_text() == "hello"
    assert json.loads((out / WRITTEN_LIST).read_text()) == {"tool": "expo-stream",
                                                             "files": ["a/b.txt"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no lock left


def test_abort_leaves_nothing_and_release_keeps_staging(tmp_path):
    out = tmp_path / "out"
    staging = Staging(out, [])
    staging.write_text("x", "1")
    staging.abort()
    assert list(tmp_path.iterdir()) == []
    staging = Staging(out, [])
    staging.write_text("x", "1")
    staging.release()
    assert (staging_path(out) / "x").read_text() == "1" and not out.exists()
    again = Staging(out, [])  # a resumed run finds what was written
    assert (again.path / "x").read_text() == "1"
    again.abort()


def test_a_second_writer_is_refused_while_the_first_holds_the_output(tmp_path):
    first = Staging(tmp_path / "out", [])
    try:
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            Staging(tmp_path / "out", [])
    finally:
        first.abort()


def test_publish_success_and_failure(tmp_path):
    out = tmp_path / "out"

    def write(path):
        assert not os.path.lexists(out)  # nothing visible until complete
        (path / "f").write_text("data")

    publish(out, write)
    assert (out / "f").read_text() == "data"

    def broken(path):
        (path / "half").write_text("x")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        publish(tmp_path / "other", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(UsageError, match="already exists"):
        publish(out, write)
    publish(out, lambda path: (path / "g").write_text("new"), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN_LIST, "g"]


@pytest.mark.parametrize("case, error, fragment", [
    ("exists", UsageError, "already exists (use --overwrite to replace it)"),
    ("inside", UsageError, "output would be inside the input"),
    ("is-input", UsageError, "output would be inside the input"),
    ("holds-input", UsageError, "holding the input"),
    ("no-parent", UsageError, "output's parent directory does not exist"),
    ("foreign", UsageError, "has no valid .expo-stream-files.json"),
    ("file", UsageError, "is not a directory expo-stream wrote"),
])
def test_check_output_refusals(tmp_path, case, error, fragment):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "exists").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    out, overwrite = {
        "exists": (tmp_path / "exists", False), "inside": (model / "out", False),
        "is-input": (model, True), "holds-input": (tmp_path, True),
        "no-parent": (tmp_path / "a" / "b", False), "foreign": (tmp_path / "foreign", True),
        "file": (tmp_path / "file", True),
    }[case]
    with pytest.raises(error) as info:
        check_output(out, [model], overwrite)
    assert fragment in str(info.value)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_file_expo_stream_did_not_write(tmp_path):
    out = tmp_path / "out"
    publish(out, lambda path: (path / "f").write_text("1"))
    (out / "stray.txt").write_text("user's")
    with pytest.raises(UsageError, match="holds 'stray.txt', which expo-stream did not write"):
        check_output(out, [], overwrite=True)
    (out / "stray.txt").unlink()
    check_output(out, [], overwrite=True)  # only what we wrote: replaceable


def test_check_disjoint(tmp_path):
    check_disjoint(tmp_path / "a", [tmp_path / "b"])
    check_disjoint(tmp_path / "ab", [tmp_path / "a"])  # a name prefix is not a parent
    with pytest.raises(UsageError, match="inside the input"):
        check_disjoint(tmp_path / "a" / "x" / "y", [tmp_path / "a"])


def test_replace_file_renames_a_complete_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    path.write_bytes(b"old")
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((path.read_bytes(), open(src, "rb").read()))  # before the rename
        real(src, dst)

    monkeypatch.setattr(writer.os, "replace", spy)
    replace_file(path, b"new", durable=True)
    assert seen == [(b"old", b"new")] and path.read_bytes() == b"new"

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.os, "replace", fail)
    with pytest.raises(OSError):
        replace_file(path, b"newer")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["m.json"]
