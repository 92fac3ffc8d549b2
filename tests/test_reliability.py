"""Reliability: bad input, kills at any moment, full disks; inputs never touched.

Each malformed-input case checks the exact error class (library), the exit code and a one-line
message naming the file (CLI), that nothing appears at the output path, and that every input
file keeps its bytes and mtime.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import expo_stream
from expo_stream.cli import main
from expo_stream.errors import FormatError, OutputError, PlanError, UsageError

from .helpers import load_all, tiny_pair

ROOT = os.geteuid() == 0


def snapshot(*dirs: Path) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file()}


def rewrite_header(path: Path, edit) -> None:
    """Apply ``edit(header_dict)`` to a safetensors file's header, keeping its data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])


def first_shard(dpo: Path) -> Path:
    return sorted(dpo.glob("model-*.safetensors"))[0]


def _set(key, field, value):
    def edit(h):
        h[key][field] = value
    return edit


def _case_truncated(sft, dpo):
    p = first_shard(dpo)
    p.write_bytes(p.read_bytes()[:-10])
    return p


def _case_header_len(sft, dpo):
    p = first_shard(dpo)
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    return p


def _case_header_huge(sft, dpo):
    p = first_shard(dpo)
    p.write_bytes(struct.pack("<Q", 200_000_000) + p.read_bytes()[8:])
    return p


def _case_raw_header(text):
    def case(sft, dpo):
        p = first_shard(dpo)
        raw = p.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        p.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
        return p
    return case


def _case_edit(field, value):
    def case(sft, dpo):
        p = first_shard(dpo)
        rewrite_header(p, lambda h: h["model.embed_tokens.weight"].__setitem__(field, value))
        return p
    return case


def _case_duplicate(sft, dpo):
    p = first_shard(dpo)
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8:8 + n].decode()
    first = text.index('"model.embed_tokens.weight"')
    end = text.index("}", first) + 1
    dup = text[:end] + "," + text[first:end] + text[end:]
    p.write_bytes(struct.pack("<Q", len(dup)) + dup.encode() + raw[8 + n:])
    return p


def _case_missing_shard(sft, dpo):
    p = first_shard(dpo)
    p.unlink()
    return dpo / "model.safetensors.index.json"


def _case_index_ghost(sft, dpo):
    index = dpo / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = first_shard(dpo).name
    index.write_text(json.dumps(data))
    return first_shard(dpo)


def _case_two_shards(sft, dpo):
    shards = sorted(dpo.glob("model-*.safetensors"))
    src = shards[0]
    other = shards[1]
    # Put the first tensor of shard 1 into shard 2 as well.
    from expo_stream.format.writer import write_safetensors
    from tests.helpers import _read

    a, b = _read(src), _read(other)
    name = next(iter(a))
    b[name] = a[name]
    write_safetensors(other, b)
    return other


CASES = {
    # name: (make, error class, exit code, message fragment)
    "truncated file": (_case_truncated, FormatError, 1, "truncated"),
    "header length beyond file": (_case_header_len, FormatError, 1, "past the end"),
    "header over 100 MB": (_case_header_huge, FormatError, 1, "limit"),
    "header not UTF-8": (_case_raw_header(b"\xff\xfe\xfd"), FormatError, 1, "UTF-8"),
    "header not JSON": (_case_raw_header(b"{oops"), FormatError, 1, "not valid JSON"),
    "header not an object": (_case_raw_header(b"[1,2,3]"), FormatError, 1, "not an object"),
    "unknown dtype": (_case_edit("dtype", "F7"), FormatError, 1, "unknown dtype"),
    "size mismatch": (_case_edit("shape", [24, 9]), FormatError, 1, "data_offsets span"),
    "negative shape": (_case_edit("shape", [-24, -8]), FormatError, 1, "invalid shape"),
    "non-integer shape": (_case_edit("shape", [24.0, 8]), FormatError, 1, "invalid shape"),
    "offsets overlap": (_case_edit("data_offsets", [8, 392]), FormatError, 1, "offsets"),
    "offsets past end": (_case_edit("data_offsets", [0, 10**12]), FormatError, 1, "span"),
    "duplicate keys": (_case_duplicate, FormatError, 1, "twice"),
    "index names missing shard": (_case_missing_shard, FormatError, 1, "missing"),
    "index lists absent tensor": (_case_index_ghost, FormatError, 1, "'ghost.weight'"),
    "tensor in two shards": (_case_two_shards, FormatError, 1, "also appears"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_dpo(tmp_path, case):
    make, error, code, fragment = CASES[case]
    sft, dpo, _, _ = tiny_pair(tmp_path)
    bad_file = make(sft, dpo)
    before = snapshot(sft, dpo)
    with pytest.raises(error, match=fragment):
        expo_stream.merge(sft, dpo, tmp_path / "out", alpha=0.3)
    r = CliRunner().invoke(main, ["merge", "--sft", str(sft), "--dpo", str(dpo), "--out",
                                  str(tmp_path / "out"), "--alpha", "0.3"])
    assert r.exit_code == code, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert str(bad_file) in line or bad_file.name in line, line
    assert fragment in line
    assert not (tmp_path / "out").exists()
    assert snapshot(sft, dpo) == before


@pytest.mark.parametrize("args,error,code,fragment", [
    (lambda t, s, d: [t / "nope", d], UsageError, 2, "no such file"),
    (lambda t, s, d: [(t / "empty").mkdir() or t / "empty", d], FormatError, 1, "no model.safetensors"),
])
def test_missing_and_empty_inputs(tmp_path, args, error, code, fragment):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    a, b = args(tmp_path, sft, dpo)
    with pytest.raises(error, match=fragment):
        expo_stream.merge(a, b, tmp_path / "out", alpha=0.3)
    r = CliRunner().invoke(main, ["merge", "--sft", str(a), "--dpo", str(b), "--out",
                                  str(tmp_path / "out"), "--alpha", "0.3"])
    assert r.exit_code == code and fragment in r.output and str(a) in r.output


def test_plan_errors_have_their_class(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path, extra={"model.norm.weight": (np.ones(3, np.float32), None)})
    before = snapshot(sft, dpo)
    with pytest.raises(PlanError, match="shape"):
        expo_stream.merge(sft, dpo, tmp_path / "out", alpha=0.3)
    assert snapshot(sft, dpo) == before


def test_debug_flag_shows_the_traceback(tmp_path):
    r = CliRunner().invoke(main, ["merge", "--debug", "--sft", str(tmp_path / "x"), "--dpo",
                                  str(tmp_path / "y"), "--out", str(tmp_path / "o"), "--alpha", "1"])
    assert isinstance(r.exception, UsageError)


def test_read_only_output_location(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    target = tmp_path / "ro"
    target.mkdir()
    if ROOT:
        # Root ignores permission bits: a read-only mount is the honest read-only location.
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(target)]).returncode:
            pytest.skip("cannot mount a tmpfs here")
    else:
        target.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable|Read-only|cannot create"):
            expo_stream.merge(sft, dpo, target / "out", alpha=0.3)
        r = CliRunner().invoke(main, ["merge", "--sft", str(sft), "--dpo", str(dpo), "--out",
                                      str(target / "out"), "--alpha", "0.3"])
        assert r.exit_code == 1 and str(target) in r.output
    finally:
        if ROOT:
            subprocess.run(["umount", str(target)])
        else:
            target.chmod(0o755)


# ---- disk full ---------------------------------------------------------------------------------

def test_disk_full_via_fault_injection(tmp_path, monkeypatch):
    """A write that fails with ENOSPC mid-merge: one clear error, no temporary files left."""
    sft, dpo, _, _ = tiny_pair(tmp_path)
    before = snapshot(sft, dpo)
    calls = {"n": 0}
    real = os.pwrite

    def failing(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(OutputError, match="disk full"):
        expo_stream.merge(sft, dpo, tmp_path / "out", alpha=0.3, max_shard_size="500B")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo", "sft"]
    assert snapshot(sft, dpo) == before


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs needs root")
def test_disk_full_on_a_small_tmpfs(tmp_path):
    sft, dpo, _, dpo_tensors = tiny_pair(tmp_path, "F32", "F32")
    small = tmp_path / "small"
    small.mkdir()
    size = sum(a.nbytes for a in dpo_tensors.values()) // 2
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        before = snapshot(sft, dpo)
        r = CliRunner().invoke(main, ["merge", "--sft", str(sft), "--dpo", str(dpo), "--out",
                                      str(small / "out"), "--alpha", "0.3", "--quiet"])
        assert r.exit_code == 1, r.output
        assert "disk full" in r.output or "No space" in r.output
        assert list(small.iterdir()) == []
        assert snapshot(sft, dpo) == before
    finally:
        subprocess.run(["umount", str(small)])


# ---- kill and resume ---------------------------------------------------------------------------

MERGE = ("import sys, expo_stream; expo_stream.merge(sys.argv[1], sys.argv[2], sys.argv[3], "
         "alpha=2.5, max_shard_size='40KB', chunk_elements=512, backend='numpy', threads=2)")


def _merge_cmd(sft, dpo, out):
    return [sys.executable, "-c", MERGE, str(sft), str(dpo), str(out)]


def _tensor_bytes(out: Path) -> dict:
    return {k: v.tobytes() for k, v in load_all(out).items()}


def test_killed_merges_resume_to_identical_bytes(tmp_path):
    config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 128,
              "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    sft, dpo, _, _ = tiny_pair(tmp_path, config=config, dpo_shard=30_000)
    before = snapshot(sft, dpo)
    reference = tmp_path / "reference"
    staging = tmp_path / ".reference.expo-partial"
    # Kill points are spread over the part of a merge that writes: from the staging directory's
    # appearance (after imports and planning) to the end, taken from the fastest of three runs;
    # a wall-clock range from 0 put many kills into the interpreter's start or after the end.
    runs = []
    for _ in range(3):
        shutil.rmtree(reference, ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(_merge_cmd(sft, dpo, reference))
        writing = None
        while proc.poll() is None:
            if writing is None and staging.exists():
                writing = time.perf_counter() - t0
            time.sleep(0.002)
        assert proc.returncode == 0
        runs.append((time.perf_counter() - t0, writing or 0.0))
    full, writing = min(runs)
    expected = {p.name: p.read_bytes() for p in reference.iterdir()
                if p.suffix == ".safetensors" or p.name.endswith("index.json")}
    shards = sum(name.endswith(".safetensors") for name in expected)
    assert shards >= 3
    rng = random.Random(1234)
    kills = resumed_with_work = 0
    for point in range(20):
        out = tmp_path / f"out{point}"
        partial = out.parent / f".{out.name}.expo-partial"
        delay = rng.uniform(writing, writing + 0.9 * (full - writing))
        proc = subprocess.Popen(_merge_cmd(sft, dpo, out))
        if point % 2:
            # Even points die at a random moment; odd ones once the staging directory holds a
            # given number of shard files, so some kills land mid-run whatever the machine's pace.
            target = 1 + (point // 2) % (shards - 1)
            while proc.poll() is None and sum(1 for _ in partial.glob("*.safetensors")) < target:
                time.sleep(0.0005)
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        if out.exists():
            # Killed after the final rename: the output must already be complete.
            assert not partial.exists()
        else:
            if partial.exists() and any(partial.glob("*.safetensors")):
                resumed_with_work += 1
            subprocess.run(_merge_cmd(sft, dpo, out), check=True)
        got = {p.name: p.read_bytes() for p in out.iterdir()
               if p.suffix == ".safetensors" or p.name.endswith("index.json")}
        assert got == expected, f"kill point {point}"
        assert not partial.exists()
        shutil.rmtree(out)
    assert kills >= 15 and resumed_with_work >= 5, (kills, resumed_with_work)
    assert snapshot(sft, dpo) == before


def test_resume_reuses_proven_shards_and_rewrites_corrupt_ones(tmp_path, caplog):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    expo_stream.merge(sft, dpo, out, alpha=0.3, max_shard_size="300B")
    expected = _tensor_bytes(out)
    # Pretend the run died before publishing: move the result back to the staging name.
    partial = tmp_path / ".out.expo-partial"
    os.rename(out, partial)
    (partial / "model.safetensors.index.json").unlink()
    shards = sorted(partial.glob("model-*.safetensors"))
    corrupt = bytearray(shards[1].read_bytes())
    corrupt[-1] ^= 0xFF
    shards[1].write_bytes(bytes(corrupt))
    import logging

    with caplog.at_level(logging.INFO, logger="expo_stream"):
        expo_stream.merge(sft, dpo, out, alpha=0.3, max_shard_size="300B")
    assert f"{len(shards) - 1} shard(s) kept from an interrupted run, 1 to write" in caplog.text
    assert _tensor_bytes(out) == expected


def test_a_different_merge_does_not_reuse_a_stale_staging_directory(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    expo_stream.merge(sft, dpo, out, alpha=0.3)
    os.rename(out, tmp_path / ".out.expo-partial")
    expo_stream.merge(sft, dpo, out, alpha=0.5)
    fresh = tmp_path / "fresh"
    expo_stream.merge(sft, dpo, fresh, alpha=0.5)
    assert _tensor_bytes(out) == _tensor_bytes(fresh)


# ---- verify ------------------------------------------------------------------------------------

def test_verify_passes_and_catches_corruption(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    expo_stream.merge(sft, dpo, out, alpha="0.3,2", max_shard_size="500B")
    r = CliRunner().invoke(main, ["verify", str(out), "--sample", "100"])
    assert r.exit_code == 0, r.output
    assert r.output.count(": OK") == 2
    shard = sorted((out / "alpha-2").glob("model-*.safetensors"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x01
    shard.write_bytes(bytes(raw))
    r = CliRunner().invoke(main, ["verify", str(out), "--sample", "100"])
    assert r.exit_code == 1
    from expo_stream.format.safetensors import read_header

    last = read_header(shard).tensors[-1].name  # the flipped byte is in the shard's last tensor
    assert f"differ from the recorded digest; tensor(s) {last!r}" in r.output
    assert "element(s) differ from the recomputation" in r.output


def test_verify_rejects_what_is_not_an_output(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    r = CliRunner().invoke(main, ["verify", str(dpo)])
    assert r.exit_code == 1 and "not an expo-stream output" in r.output
