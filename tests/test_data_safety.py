"""Never lose data: what --overwrite may remove, one writer per output, ambiguous inputs,
corrupt side files, control characters in names, and the exit codes of interrupted runs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import expo_stream
from expo_stream.cli import main
from expo_stream.errors import UsageError
from expo_stream.execute.verify import verify
from expo_stream.format.writer import WRITTEN_LIST, lock_path, publish, save_checkpoint, staging_path

from .helpers import tiny_pair


def snapshot(*roots: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


def one_error_line(r) -> str:
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


# ---- --overwrite removes only what expo-stream wrote --------------------------------------------

def test_overwrite_never_removes_a_directory_holding_the_inputs(tmp_path):
    work = tmp_path / "W"
    sft, dpo, _, _ = tiny_pair(work)
    before = snapshot(work)
    r = CliRunner().invoke(main, ["merge", "--sft", str(sft), "--dpo", str(dpo), "--out",
                                  str(work), "--alpha", "0.3", "--overwrite", "--quiet"])
    assert r.exit_code == 2
    assert "holding the input" in one_error_line(r)
    assert snapshot(work) == before
    assert not staging_path(work).exists() and not lock_path(work).exists()


def test_overwrite_of_a_single_file_input_s_directory_is_refused(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path / "W")
    with pytest.raises(UsageError, match="holding the input"):
        expo_stream.merge(sft / "model.safetensors", dpo, tmp_path / "W" / "sft",
                          alpha=0.3, overwrite=True)


def test_an_output_beside_single_file_inputs_is_allowed(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path / "src", dpo_shard=None)
    os.rename(sft / "model.safetensors", tmp_path / "sft.safetensors")
    os.rename(dpo / "model.safetensors", tmp_path / "dpo.safetensors")
    result = expo_stream.merge(tmp_path / "sft.safetensors", tmp_path / "dpo.safetensors",
                               tmp_path / "merged", alpha=0.3)
    assert verify(result.outputs[0], sample=100)[0].ok


def test_overwrite_refuses_a_directory_expo_stream_did_not_write(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(UsageError, match="not an expo-stream output"):
        expo_stream.merge(sft, dpo, mine, alpha=0.3, overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"


def test_overwrite_refuses_an_output_with_a_file_added_later(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    expo_stream.merge(sft, dpo, out, alpha="0.3,0.5")
    (out / "alpha-0.5" / "eval.json").write_text("{}")
    with pytest.raises(UsageError, match="'alpha-0.5/eval.json', which expo-stream did not write"):
        expo_stream.merge(sft, dpo, out, alpha=0.1, overwrite=True)
    assert (out / "alpha-0.5" / "eval.json").exists()


def test_overwrite_replaces_an_earlier_output_and_an_empty_directory(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    expo_stream.merge(sft, dpo, out, alpha="0.3,0.5")
    expo_stream.merge(sft, dpo, out, alpha=0.1, overwrite=True)
    recipe = json.loads((out / "expo_recipe.json").read_text())
    assert recipe["schedule"]["alpha"] == 0.1 and not (out / "alpha-0.3").exists()
    listed = json.loads((out / WRITTEN_LIST).read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in out.iterdir() if p.name != WRITTEN_LIST)
    empty = tmp_path / "empty"
    empty.mkdir()
    expo_stream.merge(sft, dpo, empty, alpha=0.1, overwrite=True)
    assert verify(empty, sample=100)[0].ok


def test_publish_refuses_an_output_that_holds_its_input(tmp_path):
    # mm export and mm preprocess publish through this helper with their inputs.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "weights.bin").write_bytes(b"x")

    def write(path):
        (path / "a.txt").write_text("a")

    with pytest.raises(UsageError, match="holding the input"):
        publish(tmp_path, write, inputs=[tmp_path / "run"], overwrite=True)
    assert (tmp_path / "run" / "weights.bin").read_bytes() == b"x"
    with pytest.raises(UsageError, match="inside the input"):
        publish(tmp_path / "run" / "out", write, inputs=[tmp_path / "run"])


def test_train_run_overwrite_refuses_what_is_not_a_run_or_holds_an_input(tmp_path):
    pytest.importorskip("torch")
    from expo_stream.multimodal.train import check_run_dir

    work = tmp_path / "W"
    (work / "data").mkdir(parents=True)
    (work / "data" / "rows.parquet").write_bytes(b"rows")
    with pytest.raises(UsageError, match="holding the input"):
        check_run_dir(work, [work / "data"], overwrite=True)
    with pytest.raises(UsageError, match="not a training run"):
        check_run_dir(work, [], overwrite=True)
    assert (work / "data" / "rows.parquet").read_bytes() == b"rows"
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--tiny", "--data", str(work / "data"),
                                  "--out", str(work), "--overwrite"])
    assert r.exit_code == 2 and "holding the input" in one_error_line(r)


@pytest.mark.parametrize("command", ["generate", "mm-generate"])
def test_generation_never_writes_over_its_own_inputs(tmp_path, command):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": "hi", "dataset": "t"}]))
    model = tmp_path / "model"
    model.mkdir()
    args = (["generate", "--model", str(model), "--prompts", str(prompts)] if command == "generate"
            else ["mm", "generate", "--model", str(model), "--requests", str(prompts)])
    for out in (prompts, model / "answers.json"):
        r = CliRunner().invoke(main, [*args, "--out", str(out)])
        assert r.exit_code == 2 and "inside the input" in one_error_line(r)
    assert json.loads(prompts.read_text()) == [{"instruction": "hi", "dataset": "t"}]


# ---- one writer per output -----------------------------------------------------------------------

def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "expo_stream.cli", *map(str, args)]


def test_concurrent_merges_into_one_output_never_publish_an_incomplete_one(tmp_path):
    config = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 256,
              "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    sft, dpo, _, _ = tiny_pair(tmp_path, config=config, dpo_shard=60_000)
    base = ["merge", "--sft", sft, "--dpo", dpo, "--alpha", "2.5", "--max-shard-size", "40KB",
            "--backend", "numpy", "--threads", "2", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(_cli(*base, "--out", tmp_path / "timed"), check=True, capture_output=True)
    full = time.perf_counter() - t0
    rng = random.Random(7)
    outcomes = {"published": 0, "locked out": 0, "exists": 0}
    for trial in range(24):
        out = tmp_path / f"out{trial}"
        extra = ["--overwrite"] if trial % 3 == 2 else []
        first = subprocess.Popen(_cli(*base, "--out", out, *extra), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0, full))
        second = subprocess.Popen(_cli(*base, "--out", out, *extra), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        for proc in (first, second):
            stdout, stderr = proc.communicate(timeout=120)
            if proc.returncode == 0:
                outcomes["published"] += 1
                assert f"wrote {out}" in stdout
            else:
                lines = stderr.strip().splitlines()
                assert proc.returncode == 2 and len(lines) == 1, (trial, proc.returncode, stderr)
                assert lines[0].startswith(f"error: {out}: ")
                outcomes["locked out" if "another expo-stream run (pid" in lines[0] else "exists"] += 1
        reports = verify(out, sample=100)
        assert len(reports) == 1 and reports[0].ok, (trial, reports[0].problems)
        assert not staging_path(out).exists() and not lock_path(out).exists()
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # Both ways of refusing happened, so the runs did overlap.
    assert outcomes["locked out"] >= 4 and outcomes["published"] >= 24, outcomes


def test_a_second_run_names_the_first_and_touches_nothing(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    from expo_stream.format.writer import OutputLock

    held = OutputLock(out.absolute())
    try:
        with pytest.raises(UsageError, match=rf"another expo-stream run \(pid {os.getpid()}\)"):
            expo_stream.merge(sft, dpo, out, alpha=0.3)
        assert not staging_path(out).exists()
    finally:
        held.release()
    expo_stream.merge(sft, dpo, out, alpha=0.3)
    assert verify(out, sample=100)[0].ok


def test_a_killed_run_s_temporaries_do_not_reach_the_output(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    staging = staging_path(out)
    staging.mkdir()
    (staging / ".expo_manifest.json.123.abcd.tmp").write_text("{")
    expo_stream.merge(sft, dpo, out, alpha=0.3)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert verify(out, sample=100)[0].ok


# ---- ambiguous checkpoints, corrupt side files, names --------------------------------------------

def test_a_directory_with_both_a_single_file_and_an_index_is_refused(tmp_path):
    sft, dpo, _, dpo_tensors = tiny_pair(tmp_path)
    save_checkpoint(tmp_path / "single", dpo_tensors)
    os.rename(tmp_path / "single" / "model.safetensors", dpo / "model.safetensors")
    r = CliRunner().invoke(main, ["merge", "--sft", str(sft), "--dpo", str(dpo), "--out",
                                  str(tmp_path / "out"), "--alpha", "0.3", "--quiet"])
    assert r.exit_code == 1
    assert "holds both model.safetensors and model.safetensors.index.json" in one_error_line(r)
    # Naming the file chooses it.
    expo_stream.merge(sft, dpo / "model.safetensors", tmp_path / "out", alpha=0.3)


@pytest.mark.parametrize("recipe", ["{not json", "[]", '{"sft": "a", "dpo": "b"}',
                                    '{"sft": "a", "dpo": "b", "tensors": {"x": {}}}'])
def test_verify_reports_a_corrupt_recipe_in_one_line(tmp_path, recipe):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    expo_stream.merge(sft, dpo, out, alpha=0.3)
    (out / "expo_recipe.json").write_text(recipe)
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{out / 'expo_recipe.json'}: " in r.output and "recipe" in r.output.splitlines()[1]


def test_control_characters_in_tensor_names_are_quoted(tmp_path):
    name = "evil\nerror: forged line"
    sft, dpo, _, _ = tiny_pair(tmp_path, extra={name: (np.ones(3, np.float32),
                                                       np.ones(4, np.float32))})
    r = CliRunner().invoke(main, ["merge", "--sft", str(sft), "--dpo", str(dpo), "--out",
                                  str(tmp_path / "out"), "--alpha", "0.3", "--quiet"])
    assert r.exit_code == 1
    line = one_error_line(r)
    assert repr(name) in line


# ---- interrupted runs ----------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_merge_exits_128_plus_the_signal_and_says_how_to_resume(tmp_path, sig, code):
    config = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 256,
              "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    sft, dpo, _, _ = tiny_pair(tmp_path, config=config)
    out = tmp_path / "out"
    staging = staging_path(out)
    args = _cli("merge", "--sft", sft, "--dpo", dpo, "--out", out, "--alpha", "0.3",
                "--max-shard-size", "20KB", "--backend", "numpy", "--threads", "1", "--quiet")
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    while not any(staging.glob("model-*.safetensors")) and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the merge finished before the signal arrived")
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"interrupted \({sig.name}\); \d+ of \d+ shard\(s\) finished, kept in "
        rf"{re.escape(str(staging))}; run the same command again to resume", lines[0]), lines
    assert not lock_path(out).exists() and not out.exists()
    subprocess.run(args, check=True)
    assert verify(out, sample=100)[0].ok
