"""Hub to Hub in bounded disk: ``merge --stream --push-to`` without ``--out``.

The inputs are served by the local Hub stand-in (tests/hub_server.py) with HTTP ranges and
injected faults; each CLI run is a subprocess with its own HF_HOME. What is pushed must equal a
local merge of the same pair, byte for byte; nothing of the inputs may land on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

from expo_stream.format.writer import WRITTEN_LIST  # noqa: E402

from .helpers import tiny_pair  # noqa: E402
from .hub_server import LocalHub  # noqa: E402
from .test_hub import cli, env_for  # noqa: E402

WEIGHTS = (".safetensors", ".index.json")


@pytest.fixture
def hub(tmp_path):
    with LocalHub(tmp_path / "hub-data") as server:
        yield server


def seeded(hub, tmp_path, **pair):
    """A tiny pair (SFT and DPO sharded differently) on the stand-in as me/sft and me/dpo."""
    sft, dpo, _, _ = tiny_pair(tmp_path, **{"sft_shard": 5000, "dpo_shard": 3000, **pair})
    shas = hub.add_repo("me/sft", sft), hub.add_repo("me/dpo", dpo)
    return sft, dpo, shas


def local_merge(sft, dpo, out, *args):
    cli(dict(os.environ), "merge", "--sft", sft, "--dpo", dpo, "--out", out, "--quiet", *args)
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name.endswith(WEIGHTS)}


def pushed(hub, repo):
    return {k: v["sha256"] for k, v in hub.manifest(repo).items() if k.endswith(WEIGHTS)}


def hub_file(hub, repo, path) -> bytes:
    """A file's bytes at the head of ``repo`` on the stand-in (small files inline, LFS by oid)."""
    content = hub.state.repos[repo].commits[-1][1][path]
    return (hub.state.blobs / content[0]).read_bytes() if isinstance(content, tuple) else content


def stream(env, *args, check=True):
    return cli(env, "merge", "--sft", "me/sft", "--dpo", "me/dpo", "--stream", "--push-to",
               "me/out", "--max-shard-size", "2KB", "--quiet", *args, check=check)


@pytest.mark.parametrize("schedule", [["--alpha", "0.3"], ["--layer-alphas", "5,10"],
                                      ["--alpha", "0.3,2.5"]])
def test_pushed_files_equal_a_local_merge_and_no_input_is_stored(hub, tmp_path, schedule):
    sft, dpo, (sft_sha, _) = seeded(hub, tmp_path)
    env = env_for(hub, tmp_path)
    r = stream(env, *schedule)
    assert "/me/out/commit/" in r.stdout
    want = local_merge(sft, dpo, tmp_path / "local", "--max-shard-size", "2KB", *schedule)
    assert len(want) >= 4 and pushed(hub, "me/out") == want
    # One commit published everything; nothing of the inputs and no staging is left on disk.
    assert len(hub.state.repos["me/out"].commits) == 2
    home = Path(env["HF_HOME"])
    assert not [p for p in home.rglob("*") if p.suffix == ".safetensors"]
    assert not list((home / "expo-stream" / "pushes").iterdir())
    # Each input file streamed front to back once (plus small reads: a sample, the zero check).
    for name in ("model.safetensors", "model-00001-of-00002.safetensors"):
        whole = [q for q in hub.requests(name=name) if q.range and q.range.startswith("bytes=0-")
                 and q.sent > 1000]
        assert len(whole) == 1, [(q.range, q.sent) for q in hub.requests(name=name)]
    sub = "alpha-0.3/" if schedule == ["--alpha", "0.3,2.5"] else ""
    files = hub.manifest("me/out")
    assert WRITTEN_LIST not in {k.rsplit("/", 1)[-1] for k in files}
    recipe = json.loads(hub_file(hub, "me/out", f"{sub}expo_recipe.json"))
    assert recipe["sft"] == f"me/sft@{sft_sha}"
    assert str(tmp_path) not in json.dumps(recipe) and "command" not in recipe


def test_recipe_of_a_streamed_merge_reproduces_it(hub, tmp_path):
    seeded(hub, tmp_path)
    env = env_for(hub, tmp_path)
    stream(env, "--alpha", "0.3")
    recipe = tmp_path / "expo_recipe.json"
    recipe.write_bytes(hub_file(hub, "me/out", "expo_recipe.json"))
    out = tmp_path / "again"
    cli(env, "merge", "--recipe", recipe, "--out", out, "--max-shard-size", "2KB", "--quiet")
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()
           if p.name.endswith(WEIGHTS)}
    assert got == pushed(hub, "me/out")


def test_a_dropped_connection_resumes_from_its_offset(hub, tmp_path):
    sft, dpo, _ = seeded(hub, tmp_path)
    # Every answer longer than 3000 bytes is cut there: only the file's stream (5328 bytes) is.
    hub.drop_after("model-00001-of-00002.safetensors", 3000, times=None)
    stream(env_for(hub, tmp_path), "--alpha", "0.3")
    reads = hub.requests(name="model-00001-of-00002.safetensors", method="GET")
    cut = [q for q in reads if q.dropped]
    assert len(cut) == 1 and cut[0].sent == 3000 and cut[0].range == "bytes=0-5327"
    after = reads[reads.index(cut[0]) + 1]
    assert after.range == "bytes=3000-5327" and not after.dropped  # from the offset, not byte 0
    assert pushed(hub, "me/out") == local_merge(sft, dpo, tmp_path / "local",
                                                "--max-shard-size", "2KB", "--alpha", "0.3")


@pytest.mark.parametrize("repo,name", [("me/sft", "model.safetensors"),
                                       ("me/dpo", "model-00002-of-00002.safetensors")])
def test_a_corrupted_byte_is_caught_and_nothing_is_published(hub, tmp_path, repo, name):
    seeded(hub, tmp_path)
    hub.corrupt(repo, name, hub.manifest(repo)[name]["size"] - 100)  # in a tensor, not the header
    r = stream(env_for(hub, tmp_path), "--alpha", "0.3", check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and repo in lines[0] and name in lines[0] and "sha256" in lines[0]
    assert len(hub.state.repos["me/out"].commits) == 1  # the repo exists, holding nothing


def test_a_hub_that_stays_down_gives_one_line(hub, tmp_path):
    seeded(hub, tmp_path)
    hub.down(True)
    r = stream(env_for(hub, tmp_path), "--alpha", "0.3", check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "me/sft" in lines[0], r.stderr


def test_reads_that_keep_failing_end_in_one_line_naming_repo_file_and_offset(hub, tmp_path,
                                                                              monkeypatch):
    from expo_stream.errors import ExpoStreamError
    from expo_stream.sources import hub as source

    seeded(hub, tmp_path)
    for key, value in env_for(hub, tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(source, "RETRIES", 2)
    checkpoint = source.open_checkpoint("me/dpo")
    file = checkpoint.files[1]
    hub.fail(file.name, status=503, times=None)
    with pytest.raises(ExpoStreamError) as caught:
        source.fetch_range(file, 64, memoryview(bytearray(file.size - 64)))
    message = str(caught.value)
    assert "\n" not in message and "me/dpo" in message and file.name in message
    assert "from byte 64" in message and "HTTP 503" in message
    tries = [q for q in hub.requests(name=file.name) if q.range.startswith("bytes=64-")]
    assert len(tries) == 1 + 2  # the first try and RETRIES more


def test_offline_refuses_stream_in_one_line(hub, tmp_path):
    seeded(hub, tmp_path)
    r = stream(env_for(hub, tmp_path, offline=True), "--alpha", "0.3", check=False)
    assert r.returncode != 0 and "HF_HUB_OFFLINE" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_killed_push_resumes_without_recomputing_or_reuploading(tmp_path):
    # Uploads at 20 kB/s: the push takes seconds, and a kill lands between two shards.
    with LocalHub(tmp_path / "slow-hub", upload_bandwidth=20_000) as hub:
        _killed_push_resumes(hub, tmp_path)


def confirmed(record: Path) -> int:
    """Shards an interrupted push recorded as uploaded with every input's digest checked."""
    return sum(v["confirmed"] for v in json.loads(record.read_text())["shards"].values())


def _killed_push_resumes(hub, tmp_path):
    sft, dpo, _ = seeded(hub, tmp_path, sft_shard=None)
    env = env_for(hub, tmp_path)
    args = [sys.executable, "-m", "expo_stream.cli", "merge", "--sft", "me/sft", "--dpo", "me/dpo",
            "--stream", "--push-to", "me/out", "--max-shard-size", "500B", "--alpha", "0.3",
            "--quiet"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    record = next(Path(env["HF_HOME"]).glob("expo-stream/pushes/*"), None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        record = next(Path(env["HF_HOME"]).glob("expo-stream/pushes/*/uploaded.json"), None)
        if record is not None and confirmed(record) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {q.name for q in hub.requests(kind="upload") if q.status == 200}
    done = confirmed(record)
    assert 2 <= done and len(hub.state.repos["me/out"].commits) == 1
    hub.state.upload = None  # full speed for the rest
    before = len(hub.requests(kind="upload"))
    r = cli(env, *args[3:])
    assert f"{done} shard(s) kept from an earlier run" in r.stdout
    again = {q.name for q in hub.requests(kind="upload")[before:]}
    assert first and not (first & again)  # no object uploaded twice
    assert pushed(hub, "me/out") == local_merge(sft, dpo, tmp_path / "local", "--alpha", "0.3",
                                                "--max-shard-size", "500B")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 16 MiB tmpfs (needs root to mount; skipped where that is refused)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
                                            str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_hub_to_hub_fits_in_a_tmpfs_smaller_than_either_input(hub, tmp_path, small_tmpfs):
    # The command: 5 MB shards, inputs of 42 MB each, 16 MiB of disk in all.
    config = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 8192,
              "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    sft, dpo, _ = seeded(hub, tmp_path, config=config, sft_shard=None, dpo_shard=12_000_000)
    sizes = [sum(p.stat().st_size for p in d.glob("*.safetensors")) for d in (sft, dpo)]
    assert min(sizes) > 2 * 16 * 2**20  # each input is over twice the disk the run may use
    env = dict(env_for(hub, tmp_path), HF_HOME=str(small_tmpfs / "hf"),
               TMPDIR=str(small_tmpfs / "tmp"))
    (small_tmpfs / "tmp").mkdir()
    common = ["--sft", "me/sft", "--dpo", "me/dpo", "--alpha", "0.3", "--max-shard-size", "5MB",
              "--quiet"]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "expo_stream.cli", "merge", *common, *args],
                              env=env, cwd=small_tmpfs, capture_output=True, text=True)

    r = run("--stream", "--push-to", "me/out")
    assert r.returncode == 0, r.stderr
    assert pushed(hub, "me/out") == local_merge(sft, dpo, tmp_path / "local", "--alpha", "0.3",
                                                "--max-shard-size", "5MB")
    # Downloading first needs room for both inputs: it fails at once, in one line.
    r = run("--out", "merged", "--push-to", "me/out-first")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0], r.stderr
    assert not (small_tmpfs / "merged").exists()


def test_peak_anonymous_memory_of_a_hub_to_hub_merge_stays_under_300_mb(hub, tmp_path):
    import ml_dtypes
    import numpy as np

    from expo_stream.format.writer import save_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from rss import run_sampled

    # 2 x 160 MiB inputs, sharded unlike each other: more than the stream's buffers could hold.
    rng = np.random.default_rng(0)
    base = rng.standard_normal(2**20, dtype=np.float32)
    for name, shift, shard in (("sft", 0.0, None), ("dpo", 1e-3, 100 * 2**20)):
        tensors = {f"model.layers.{i}.mlp.up_proj.weight":
                   (np.tile(base, 16) + shift * (i + 1)).astype(ml_dtypes.bfloat16).reshape(-1, 1024)
                   for i in range(5)}
        save_checkpoint(tmp_path / name, tensors, shard, {"num_hidden_layers": 5})
        hub.add_repo(f"me/{name}", tmp_path / name)
    env = env_for(hub, tmp_path)
    rc, peak, _ = run_sampled([sys.executable, "-m", "expo_stream.cli", "merge", "--sft", "me/sft",
                               "--dpo", "me/dpo", "--alpha", "0.3", "--stream", "--push-to",
                               "me/out", "--max-shard-size", "64MB", "--quiet"], env=env)
    assert rc == 0
    assert peak < 300 * 2**20, peak / 2**20
    assert sum(v["size"] for v in hub.manifest("me/out").values()) > 160 * 2**20


def test_dry_run_says_what_each_mode_costs(hub, tmp_path):
    sft, dpo, _ = seeded(hub, tmp_path)
    inputs = sum(p.stat().st_size for d in (sft, dpo) for p in d.glob("*.safetensors"))
    r = stream(env_for(hub, tmp_path), "--alpha", "0.3", "--dry-run")
    cost = [line for line in r.stdout.splitlines() if "download" in line]
    assert len(cost) == 2 and cost[0].startswith("cost: stream, shard by shard to the Hub")
    assert f"download {inputs / 1024:.1f} KiB" in cost[0] and "download first instead" in cost[1]
    assert not hub.requests(kind="upload") and "me/out" not in hub.state.repos


def test_a_pushed_local_merge_names_its_inputs_by_directory_and_sha256(hub, tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    out = tmp_path / "out"
    cli(env_for(hub, tmp_path), "merge", "--sft", sft, "--dpo", dpo, "--out", out, "--alpha",
        "0.3", "--quiet", "--push-to", "me/local")
    pushed_recipe = json.loads(hub_file(hub, "me/local", "expo_recipe.json"))
    assert pushed_recipe["sft"] == "sft" and pushed_recipe["dpo"] == "dpo"
    assert pushed_recipe["sft_sha256"] == {
        "model.safetensors": hashlib.sha256((sft / "model.safetensors").read_bytes()).hexdigest()}
    assert len(pushed_recipe["dpo_sha256"]) == len(list(dpo.glob("*.safetensors"))) + 1  # + index
    assert str(tmp_path) not in json.dumps(pushed_recipe) and "command" not in pushed_recipe
    # The local copy keeps where its inputs are, so `verify` can recompute from them.
    assert json.loads((out / "expo_recipe.json").read_text())["sft"] == str(sft.resolve())


def test_shards_uploaded_before_a_corrupt_input_is_found_are_computed_again(hub, tmp_path):
    # An SFT file of 10 stream ranges (8 MiB each) with one byte flipped in its last tensor:
    # shards read from its start are uploaded before the digest fails at its end. They must
    # not be kept by the next run, which reads the file intact.
    config = {"hidden_size": 1024, "intermediate_size": 2048, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 8192,
              "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    sft, dpo, _ = seeded(hub, tmp_path, config=config, sft_shard=None, dpo_shard=None)
    size = hub.manifest("me/sft")["model.safetensors"]["size"]
    assert size > 10 * 8 * 2**20 * 0.9
    hub.corrupt("me/sft", "model.safetensors", size - 100)
    env = env_for(hub, tmp_path)
    common = ["--alpha", "0.3", "--max-shard-size", "8MB"]
    r = cli(env, "merge", "--sft", "me/sft", "--dpo", "me/dpo", "--stream", "--push-to",
            "me/out", "--quiet", *common, check=False)
    assert r.returncode != 0 and "sha256" in r.stderr
    record = next(Path(env["HF_HOME"]).glob("expo-stream/pushes/*/uploaded.json"))
    uploaded = json.loads(record.read_text())["shards"]
    assert uploaded and not any(v["confirmed"] for v in uploaded.values())
    hub.clear_faults()
    r = cli(env, "merge", "--sft", "me/sft", "--dpo", "me/dpo", "--stream", "--push-to",
            "me/out", "--quiet", *common)
    assert "0 shard(s) kept from an earlier run" in r.stdout
    assert pushed(hub, "me/out") == local_merge(sft, dpo, tmp_path / "local", *common)
