"""The Ray executor on a real two-node local cluster: same bytes as the threaded executor, tasks on
both nodes, resume after an interrupted run, a task's error as one line, a killed worker retried,
and an output the nodes do not share refused (issue 14)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'expo-stream[ray]'")

from expo_stream.errors import FormatError  # noqa: E402
from expo_stream.execute.merge import make_options, plan_merge, write_plan  # noqa: E402
from expo_stream.execute.ray import RayExecutor  # noqa: E402
from expo_stream.sinks.local import LocalSink  # noqa: E402

from ..helpers import tiny_pair, two_node_ray_cluster  # noqa: E402

SHARD = 700  # bytes: the tiny model becomes several output shards


@pytest.fixture(scope="module")
def cluster():
    with two_node_ray_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    sft_dir, dpo_dir, _, _ = tiny_pair(root)
    return sft_dir, dpo_dir


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def merged(pair, out, executor=None, progress=None, **values):
    plan = plan_merge(make_options(*pair, max_shard_size=SHARD, **values))
    return write_plan(plan, out, backend="numpy", threads=1, executor=executor, progress=progress)


@pytest.mark.parametrize("values", [dict(alpha="0.3"), dict(layer_alphas="0.1,0.7"),
                                    dict(alpha="0.3,1.5")], ids=["uniform", "layers", "several"])
def test_same_bytes_as_threaded_executor_and_both_nodes_work(cluster, pair, tmp_path, values):
    local = merged(pair, tmp_path / "local", **values)
    executor, seen = RayExecutor(), []
    remote = merged(pair, tmp_path / "ray", executor, seen.append, **values)
    assert sum(seen) == local.plan.output_bytes * len(local.plan.schedules)  # progress: every byte
    assert len(local.plan.shards) >= 4
    assert tree(tmp_path / "local") == tree(tmp_path / "ray")
    assert sorted(executor.nodes) == list(range(len(local.plan.shards)))
    assert len(set(executor.nodes.values())) == 2, "every shard ran on one node"
    assert remote.written == local.written


def test_interrupted_run_resumes_and_computes_only_the_rest(cluster, pair, tmp_path, monkeypatch):
    merged(pair, tmp_path / "local", alpha="0.3")
    record = LocalSink.shard_done
    calls = []

    def interrupted(self, index, records):
        record(self, index, records)
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(LocalSink, "shard_done", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merged(pair, tmp_path / "out", RayExecutor(), alpha="0.3")
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()
    assert (tmp_path / ".out.expo-partial").is_dir()
    again = RayExecutor()
    result = merged(pair, tmp_path / "out", again, alpha="0.3")
    assert set(again.nodes).isdisjoint(calls)  # kept, not recomputed
    assert len(again.nodes) == len(result.plan.shards) - 2
    assert tree(tmp_path / "local") == tree(tmp_path / "out")


def test_task_error_is_one_line_naming_file_and_tensor(cluster, tmp_path):
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path)
    plan = plan_merge(make_options(sft_dir, dpo_dir, alpha="0.3", max_shard_size=SHARD))
    path = plan.tensors[-1].dpo.file.path
    last = max((t.dpo for t in plan.tensors if t.dpo.file.path == path), key=lambda info: info.end)
    os.truncate(path, last.end - 2)  # the input shrank after planning: only `last` is cut
    with pytest.raises(FormatError) as caught:
        write_plan(plan, tmp_path / "out", backend="numpy", threads=1, executor=RayExecutor())
    message = str(caught.value)
    assert "\n" not in message
    assert str(last.file) in message and f"`{last.name}`" in message


def _dies_once(plan, task, counter):
    """A shard task whose first attempt kills its worker process, as a lost node would."""
    from expo_stream.execute.ray import _compute_remote

    marker = Path(task.staging).parent / f"died-{task.index}"
    if task.index == 1 and not marker.exists():
        marker.write_text("")
        os._exit(1)
    return _compute_remote(plan, task, counter)


def test_killed_worker_is_retried(cluster, pair, tmp_path, monkeypatch):
    import expo_stream.execute.ray as ray_executor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(ray_executor, "_compute_remote", _dies_once)
    merged(pair, tmp_path / "local", alpha="0.3")
    merged(pair, tmp_path / "out", RayExecutor(max_retries=2), alpha="0.3")
    assert (tmp_path / "died-1").exists()
    assert tree(tmp_path / "local") == tree(tmp_path / "out")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="simulating a node that does not share --out needs root and unshare")
def test_output_the_nodes_do_not_share_is_refused(cluster, pair, tmp_path):
    # The driver runs in its own mount namespace with a fresh tmpfs over DIR: it writes staging
    # and reads probes there, while the cluster's workers write into the real DIR.
    shared = tmp_path / "dir"
    shared.mkdir()
    merge = [sys.executable, "-m", "expo_stream.cli", "merge", "--sft", str(pair[0]),
             "--dpo", str(pair[1]), "--alpha", "0.3", "--executor", "ray",
             "--ray-address", cluster.address, "--quiet", "--out", str(shared / "out")]
    script = f"mount -t tmpfs none {shared} && exec \"$@\""
    run = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *merge],
                         capture_output=True, text=True, timeout=120)
    if "mount:" in run.stderr or "unshare:" in run.stderr:
        pytest.skip(f"cannot make a private mount here: {run.stderr.strip()}")
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Ray node" in lines[0] and "same path" in lines[0], run.stderr
    assert not any(shared.iterdir()), "the refused run left files on the nodes' side"
    # The same command where driver and nodes share DIR runs.
    run = subprocess.run(merge, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (shared / "out" / "model.safetensors").is_file()


def test_hub_to_hub_on_ray_shares_no_storage(cluster, tmp_path):
    """Tasks range-read their part of the inputs from the Hub, compute and pre-upload their shard
    in a directory of their own; the driver only commits (issue 17)."""
    import hashlib

    from ..hub_server import TOKEN, LocalHub

    sft, dpo, _, _ = tiny_pair(tmp_path / "pair", sft_shard=5000, dpo_shard=3000)
    with LocalHub(tmp_path / "hub") as hub:
        hub.add_repo("me/sft", sft)
        hub.add_repo("me/dpo", dpo)
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN,
                   HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
        run = subprocess.run([sys.executable, "-m", "expo_stream.cli", "merge", "--sft", "me/sft",
                              "--dpo", "me/dpo", "--alpha", "0.3", "--stream", "--push-to",
                              "me/out", "--max-shard-size", f"{SHARD}B", "--executor", "ray",
                              "--ray-address", cluster.address, "--quiet"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        merged(pair=(sft, dpo), out=tmp_path / "local", alpha="0.3")
        local = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in (tmp_path / "local").iterdir() if p.name.endswith((".safetensors", ".json"))
                 and not p.name.startswith((".", "expo_"))}
        pushed = {k: v["sha256"] for k, v in hub.manifest("me/out").items() if k in local}
        assert len(local) >= 5 and pushed == local
        assert len(hub.state.repos["me/out"].commits) == 2  # one commit
        # Every input streamed once to check its sha256, besides the tasks' own range reads.
        for name in ("model.safetensors", "model-00001-of-00002.safetensors"):
            whole = [q for q in hub.requests(name=name) if q.range and q.range.startswith("bytes=0-")
                     and q.sent > 1000]
            assert len(whole) >= 1
        # Tasks read their own part: streams of the one SFT file that begin past its header.
        parts = [q for q in hub.requests(name="model.safetensors", method="GET")
                 if q.range and not q.range.startswith(("bytes=0-", "bytes=8-")) and q.sent > 200]
        assert len(parts) >= 2, [(q.range, q.sent) for q in hub.requests(name="model.safetensors")]
        assert not list((tmp_path / "hf" / "expo-stream" / "pushes").iterdir())
