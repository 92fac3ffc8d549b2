"""macOS and Windows rules, simulated here (tests/os_sim/sitecustomize.py removes the calls
their Python lacks before any project code runs, in every child process too).

Under each: a merge whose shards are larger than every flush threshold, several α, layer
groups, a kill and a resume, ``verify``, and one run of every other command that writes files;
merged bytes identical to a plain Linux run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import expo_stream
from expo_stream.format.writer import SYNC_EVERY_BYTES, save_checkpoint, staging_path

from .helpers import tiny_pair

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ["macos", "windows"]
BF16 = np.dtype(ml_dtypes.bfloat16)


def env_for(system: str | None) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT / "tests" / "os_sim"), str(ROOT)] if system else [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("EXPO_SIMULATE_OS", None)
    if system:
        env["EXPO_SIMULATE_OS"] = system
    return env


def cli(system: str | None, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "expo_stream.cli", *map(str, args)],
                            env=env_for(system), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def run_cli(system: str | None, *args) -> str:
    proc = cli(system, *args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, (system, args, stderr)
    return stdout


def model_bytes(directory: Path) -> dict[str, bytes]:
    """The files that hold the model (recipe and card name the command line, so they differ)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*"))
            if p.suffix == ".safetensors" or p.name in ("model.safetensors.index.json", "config.json")}


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    """An 84 MB BF16 pair: its first output shard passes the 64 MB sync step."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (10240, 4096)}
    for layer in range(6):
        shapes[f"model.layers.{layer}.mlp.down_proj.weight"] = (512, 512)
    shapes["lm_head.weight"] = (64, 512)
    sft, dpo = {}, {}
    for name, shape in shapes.items():
        base = (rng.standard_normal(shape, np.float32) * 0.02)
        sft[name] = base.astype(BF16)
        dpo[name] = (base + rng.standard_normal(shape, np.float32) * 1e-3).astype(BF16)
    config = {"num_hidden_layers": 6, "model_type": "llama", "torch_dtype": "bfloat16"}
    save_checkpoint(root / "sft", sft, 40 * 2**20, config)
    save_checkpoint(root / "dpo", dpo, None, config)
    assert shapes["model.embed_tokens.weight"][0] * 4096 * 2 > SYNC_EVERY_BYTES
    reference = root / "linux"
    run_cli(None, "merge", "--sft", root / "sft", "--dpo", root / "dpo", "--out", reference,
            "--alpha", "0.3,2.5", "--max-shard-size", "100MB", "--quiet")
    return root / "sft", root / "dpo", reference


def test_the_simulation_removes_what_each_system_lacks():
    probe = ("import os, mmap, importlib.util as u\n"
             "from expo_stream import system\n"
             "print(sorted(n for n in ('posix_fallocate', 'fdatasync', 'posix_fadvise', 'pwrite')"
             " if hasattr(os, n)), system.fcntl is None, system.msvcrt is not None,"
             " hasattr(mmap, 'MADV_WILLNEED'))")
    seen = {}
    for system in SYSTEMS:
        seen[system] = subprocess.run([sys.executable, "-c", probe], env=env_for(system),
                                      capture_output=True, text=True, check=True).stdout.strip()
    assert seen["macos"] == "['pwrite'] False False True"
    assert seen["windows"] == "[] True True False"


@pytest.mark.parametrize("system", SYSTEMS)
def test_big_merge_several_alphas_kill_resume_and_verify(big_pair, tmp_path, system):
    sft, dpo, reference = big_pair
    out = tmp_path / "out"
    args = ["merge", "--sft", sft, "--dpo", dpo, "--out", out, "--alpha", "0.3,2.5",
            "--max-shard-size", "100MB", "--quiet"]
    # Kill once the shards are open for writing (numpy backend: slow enough to catch), resume.
    proc = cli(system, *args, "--backend", "numpy", "--threads", "1")
    staging = staging_path(out)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not any(staging.glob("*/*.safetensors")):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    run_cli(system, *args)
    assert model_bytes(out) == model_bytes(reference)
    assert not staging.exists() and not list(tmp_path.glob(".*.tmp"))
    assert "OK" in run_cli(system, "verify", out, "--sample", "4")
    # Replacing an output moves the old one aside first (Windows cannot rename over it).
    run_cli(system, *args, "--overwrite")
    assert model_bytes(out) == model_bytes(reference)


@pytest.mark.parametrize("system", SYSTEMS)
def test_layer_groups_and_a_second_run_refused(tmp_path, system):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    args = ["merge", "--sft", sft, "--dpo", dpo, "--layer-alphas", "5,10,15",
            "--max-shard-size", "300B", "--quiet"]
    expo_stream.merge(sft, dpo, tmp_path / "linux", layer_alphas="5,10,15", max_shard_size="300B")
    run_cli(system, *args, "--out", tmp_path / "sim")
    assert model_bytes(tmp_path / "sim") == model_bytes(tmp_path / "linux")
    # The output lock works with that system's locking call: a held lock refuses a second run.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from expo_stream.format.writer import OutputLock; "
         "lock = OutputLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "locked")], env=env_for(system), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = cli(system, *args, "--out", tmp_path / "locked")
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2 and f"another expo-stream run (pid {holder.pid})" in stderr
    finally:
        holder.kill()
        holder.wait()
    run_cli(system, *args, "--out", tmp_path / "locked")  # the lock died with its holder
    assert model_bytes(tmp_path / "locked") == model_bytes(tmp_path / "linux")


COMMANDS = r'''
import json, sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from click.testing import CliRunner

from expo_stream.cli import main
from expo_stream.multimodal.tiny import toy_rows
from tests.generation.tiny_lm import tiny_model_dir

work = Path(sys.argv[1])


def ok(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return r.output


sft, dpo = tiny_model_dir(work / "sft", seed=0), tiny_model_dir(work / "dpo", seed=1)
prompts = work / "prompts.txt"
prompts.write_text("say hello\nname a color\n")
ok("generate", "--model", dpo, "--prompts", prompts, "--out", work / "gen.json", "--greedy",
   "--max-new-tokens", "3")
ok("select-alpha", "--sft", sft, "--dpo", dpo, "--alphas", "0.5", "--prompts", prompts,
   "--out", work / "select", "--implicit-reward", "--greedy", "--max-new-tokens", "3")
# A PyTorch .bin input is converted to safetensors first (convert.py).
bin_dir = work / "sft-bin"
bin_dir.mkdir()
from safetensors.torch import load_file
torch.save(load_file(sft / "model.safetensors"), bin_dir / "pytorch_model.bin")
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if (sft / name).exists():
        (bin_dir / name).write_bytes((sft / name).read_bytes())
ok("merge", "--sft", bin_dir, "--dpo", dpo, "--out", work / "from-bin", "--alpha", "0.3", "--quiet")
pq.write_table(pa.Table.from_pylist(toy_rows(12)), work / "rows.parquet")
ok("mm", "preprocess", work / "rows.parquet", "--out", work / "ds", "--tokenizer", "tiny")
ok("mm", "train-ddpo", "--tiny", "--steps", "2", "--batch-size", "2", "--data", work / "ds",
   "--out", work / "run")
ok("mm", "export", work / "run", "--out", work / "exp")
print(json.dumps(sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())))
'''


@pytest.mark.slow
@pytest.mark.parametrize("system", SYSTEMS)
def test_every_other_writing_command_runs(tmp_path, system):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    done = subprocess.run([sys.executable, "-c", COMMANDS, str(tmp_path)], env=env_for(system),
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    files = set(json.loads(done.stdout.strip().splitlines()[-1]))
    for expected in ("gen.json", "select/report.json", "from-bin/model.safetensors",
                     "ds/preprocess_report.json", "run/expo_mm_run.json",
                     "exp/model.safetensors"):
        assert expected in files, (expected, sorted(files))
    assert not [f for f in files if f.endswith(".tmp") or ".expo-partial" in f]
