"""The Hub integration against the real huggingface_hub client and a local Hub server.

CLI runs are subprocesses with their own environment (huggingface_hub reads HF_HOME and
HF_HUB_OFFLINE when it is imported), pointed at tests/hub_server.py with HF_ENDPOINT and
HF_HUB_DISABLE_XET=1. An opt-in test pushes to the real Hub when EXPO_HUB_TOKEN is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("huggingface_hub")

from huggingface_hub import HfApi, ModelCard, snapshot_download  # noqa: E402

from .helpers import tiny_pair  # noqa: E402
from .hub_server import TOKEN, LocalHub  # noqa: E402


@pytest.fixture
def hub(tmp_path):
    with LocalHub(tmp_path / "hub-data") as server:
        yield server


def env_for(hub, tmp_path, token=True, offline=False) -> dict:
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = TOKEN
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def cli(env, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "expo_stream.cli", *map(str, args)], env=env,
                            capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def files_of(directory) -> dict[str, bytes]:
    """What a push publishes as written: every file but the local list of what expo-stream
    wrote and the recipe (pushed with local inputs named by directory and sha256, not by path:
    test_hub_stream.py)."""
    from expo_stream.format.writer import WRITTEN_LIST

    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and p.name not in (WRITTEN_LIST, "expo_recipe.json")}


def test_merge_push_download_round_trip(hub, tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path, dpo_shard=300)
    env = env_for(hub, tmp_path)
    out = tmp_path / "out"
    r = cli(env, "merge", "--sft", sft, "--dpo", dpo, "--out", out, "--alpha", "0.3",
            "--max-shard-size", "2KB", "--quiet", "--push-to", "me/expo-tiny", "--private",
            "--sft-name", "org/tiny-sft")
    assert f"{hub.endpoint}/me/expo-tiny/commit/" in r.stdout
    assert any("/lfs/objects/batch" in line for line in hub.state.log)
    local = snapshot_download("me/expo-tiny", endpoint=hub.endpoint, token=TOKEN,
                              cache_dir=tmp_path / "dl")
    from pathlib import Path

    assert files_of(Path(local)) == files_of(out)
    assert json.loads((Path(local) / "expo_recipe.json").read_text())["sft"] == "sft"
    card = ModelCard.load(Path(local) / "README.md")
    # Repo ids only: a local input is named in the text, never by its path.
    assert card.data.base_model == ["org/tiny-sft"]
    assert str(tmp_path) not in (Path(local) / "README.md").read_text()
    assert "- Aligned (θ_dpo): `dpo (local)`" in card.text
    assert card.data.base_model_relation == "merge"
    assert "expo" in card.data.tags and card.data.library_name == "transformers"
    assert "| `model.layers` layers 0–3 | 0.3 | uniform |" in card.text
    assert "expo-stream merge --sft" in card.text


def test_multipart_lfs_upload(hub, tmp_path, monkeypatch):
    """A shard over the server's multipart threshold goes up in parts and comes back whole."""
    import ml_dtypes
    import numpy as np

    from expo_stream.format.writer import save_checkpoint
    from tests import hub_server

    rng = np.random.default_rng(0)
    big = {"model.embed_tokens.weight": rng.standard_normal((800, 1000)).astype(ml_dtypes.bfloat16)}
    save_checkpoint(tmp_path / "sft", big)
    tuned = {k: (v.astype(np.float32) + 1e-3).astype(v.dtype) for k, v in big.items()}
    save_checkpoint(tmp_path / "dpo", tuned)
    env = env_for(hub, tmp_path)
    cli(env, "merge", "--sft", tmp_path / "sft", "--dpo", tmp_path / "dpo", "--out",
        tmp_path / "out", "--alpha", "0.5", "--quiet")
    r = cli(env, "push", tmp_path / "out", "--repo", "me/big", "--commit-message", "big one")
    assert "/me/big/commit/" in r.stdout
    parts = [line for line in hub.state.log if "/part/" in line]
    assert len(parts) == -(-(1600000 + 200) // hub_server.PART_SIZE)
    local = snapshot_download("me/big", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "dl")
    from pathlib import Path

    assert files_of(Path(local)) == files_of(tmp_path / "out")


def test_inputs_by_repo_id_and_offline_cache(hub, tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    (dpo / "preprocessor_config.json").write_text('{"image_size": 8}')  # a LLaVA's processor
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    for name, folder in (("org/sft", sft), ("org/dpo", dpo)):
        api.create_repo(name, private=True)
        api.upload_folder(repo_id=name, folder_path=folder)
    env = env_for(hub, tmp_path)
    cli(env, "merge", "--sft", "org/sft", "--dpo", "org/dpo@main", "--out", tmp_path / "hub-out",
        "--alpha", "0.3", "--quiet")
    cli(env, "merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "local-out", "--alpha", "0.3",
        "--quiet")
    from .helpers import load_all

    hub_tensors = {k: v.tobytes() for k, v in load_all(tmp_path / "hub-out").items()}
    assert hub_tensors == {k: v.tobytes() for k, v in load_all(tmp_path / "local-out").items()}
    assert (tmp_path / "hub-out" / "preprocessor_config.json").read_text() == '{"image_size": 8}'
    card = ModelCard.load(tmp_path / "hub-out" / "README.md")
    assert card.data.base_model == ["org/sft", "org/dpo"]  # repo ids, without the revision
    # Offline: the cache alone serves the same repo ids.
    offline = env_for(hub, tmp_path, offline=True)
    offline["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens: any request would fail
    cli(offline, "merge", "--sft", "org/sft", "--dpo", "org/dpo", "--out", tmp_path / "off",
        "--alpha", "0.3", "--quiet")
    # A local directory wins over a repo id of the same spelling.
    (tmp_path / "org").mkdir()
    os.symlink(sft, tmp_path / "org" / "dpo")
    r = subprocess.run([sys.executable, "-m", "expo_stream.cli", "merge", "--sft", "org/sft",
                        "--dpo", "org/dpo", "--out", "x", "--alpha", "1", "--dry-run"],
                       env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dpo: org/dpo" in r.stdout


def test_private_repo_needs_a_token(hub, tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    env = env_for(hub, tmp_path)
    cli(env, "merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out", "--alpha", "1",
        "--quiet", "--push-to", "me/secret", "--private")
    anonymous = env_for(hub, tmp_path, token=False)
    r = cli(anonymous, "merge", "--sft", "me/secret", "--dpo", dpo, "--out", tmp_path / "o2",
            "--alpha", "1", check=False)
    assert r.returncode == 1 and "me/secret" in r.stderr and "Traceback" not in r.stderr
    r = cli(anonymous, "push", tmp_path / "out", "--repo", "me/other", check=False)
    assert r.returncode == 1 and "HF_TOKEN" in r.stderr


def test_stale_parent_commit_is_a_clear_error(hub, tmp_path, monkeypatch):
    from expo_stream.execute.push import push
    from expo_stream.hub import HubError

    sft, dpo, _, _ = tiny_pair(tmp_path)
    import expo_stream

    expo_stream.merge(sft, dpo, tmp_path / "out", alpha=0.3)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    push(tmp_path / "out", "me/m", token=TOKEN)
    first = HfApi(endpoint=hub.endpoint, token=TOKEN).repo_info("me/m").sha
    # Someone else commits after our push read the head: our commit's parent is now stale.
    real = HfApi.repo_info

    def stale(self, *args, **kwargs):
        info = real(self, *args, **kwargs)
        HfApi(endpoint=hub.endpoint, token=TOKEN).upload_file(
            path_or_fileobj=b"other", path_in_repo="other.txt", repo_id="me/m")
        return info

    monkeypatch.setattr(HfApi, "repo_info", stale)
    with pytest.raises(HubError, match="the branch moved meanwhile; run the command again"):
        push(tmp_path / "out", "me/m", token=TOKEN, commit_message="again")
    assert first != real(HfApi(endpoint=hub.endpoint, token=TOKEN), "me/m").sha


def test_push_refuses_what_verify_rejects(hub, tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    env = env_for(hub, tmp_path)
    cli(env, "merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out", "--alpha", "1", "--quiet")
    shard = tmp_path / "out" / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    r = cli(env, "push", tmp_path / "out", "--repo", "me/bad", check=False)
    assert r.returncode == 2 and "verify failed" in r.stderr
    assert not any("commit" in line for line in hub.state.log)


def test_branch_and_pull_request(hub, tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    env = env_for(hub, tmp_path)
    cli(env, "merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out", "--alpha", "1", "--quiet")
    r = cli(env, "push", tmp_path / "out", "--repo", "me/b", "--revision", "expo")
    assert "/me/b/commit/" in r.stdout
    r = cli(env, "push", tmp_path / "out", "--repo", "me/b", "--create-pr")
    assert "/me/b/discussions/1" in r.stdout


@pytest.mark.skipif(not os.environ.get("EXPO_HUB_TOKEN"), reason="set EXPO_HUB_TOKEN (and "
                    "EXPO_HUB_REPO=user/name) to push to the real Hub")
def test_real_hub_round_trip(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    repo = os.environ.get("EXPO_HUB_REPO", "expo-stream-test/tiny")
    env = dict(os.environ, HF_TOKEN=os.environ["EXPO_HUB_TOKEN"])
    env.pop("HF_ENDPOINT", None)
    cli(env, "merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out", "--alpha", "0.3",
        "--quiet", "--push-to", repo, "--private")
    local = snapshot_download(repo, token=os.environ["EXPO_HUB_TOKEN"], cache_dir=tmp_path / "dl")
    from pathlib import Path

    assert files_of(Path(local)) == files_of(tmp_path / "out")
    json.loads((Path(local) / "expo_recipe.json").read_text())


DOWN = "http://127.0.0.1:9"  # nothing listens there


@pytest.mark.parametrize("args", [
    ["merge", "--sft", "org/nomodel", "--dpo", "org/other", "--out", "OUT", "--alpha", "0.3"],
    ["generate", "--model", "org/nomodel", "--prompts", "PROMPTS", "--out", "OUT.json"],
    ["generate", "--model", "nomodel", "--prompts", "PROMPTS", "--out", "OUT.json"],
    ["push", "OUTPUT", "--repo", "me/x"],
])
@pytest.mark.parametrize("failure", ["network down", "offline", "not found"])
def test_every_hub_failure_is_one_line_at_once(hub, tmp_path, args, failure):
    import time

    if args[0] == "push" and failure == "not found":
        pytest.skip("a push creates its repo")
    sft, dpo, _, _ = tiny_pair(tmp_path)
    import expo_stream

    expo_stream.merge(sft, dpo, tmp_path / "output", alpha=0.3)
    (tmp_path / "prompts.txt").write_text("hi\n")
    env = env_for(hub, tmp_path, offline=failure == "offline")
    if failure == "network down":
        env["HF_ENDPOINT"] = DOWN
    args = [str(tmp_path / "output") if a == "OUTPUT" else str(tmp_path / "prompts.txt")
            if a == "PROMPTS" else str(tmp_path / a) if a.startswith("OUT") else a for a in args]
    started = time.monotonic()
    r = cli(env, *args, check=False)
    assert time.monotonic() - started < 20  # no half-minute of retries
    lines = r.stderr.strip().splitlines()
    assert r.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    if args[0] == "push":
        assert "me/x" in lines[0] and r.returncode == 1 and "Traceback" not in r.stderr
    elif "nomodel" == args[2]:
        assert "nomodel: no such file or directory, and not a Hub repo id" in lines[0]
    else:
        assert lines[0].startswith("error: org/nomodel: ")
        expected = {"network down": "cannot reach the Hub", "offline": "HF_HUB_OFFLINE",
                    "not found": "not found on"}[failure]
        assert expected in lines[0]
