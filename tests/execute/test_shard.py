"""The unit of work (execute/shard.py): picklable, self-contained, and the threaded executor's
bytes; the Ray executor where ray is not installed (its own tests: test_ray.py)."""

from __future__ import annotations

import pickle
import sys

import pytest

from expo_stream.errors import BackendUnavailableError
from expo_stream.execute.merge import make_options, plan_merge, write_plan
from expo_stream.execute.ray import RayExecutor
from expo_stream.execute.shard import ShardTask, compute_shard
from expo_stream.format.manifest import check_file

from ..helpers import tiny_pair


def test_task_pickles_and_computes_the_shard_the_merge_writes(tmp_path):
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path)
    plan = plan_merge(make_options(sft_dir, dpo_dir, alpha="0.3,2", max_shard_size=700))
    assert len(plan.shards) >= 4
    staging = tmp_path / "staging"
    subdirs = ("alpha-0.3", "alpha-2")
    for sub in subdirs:
        (staging / sub).mkdir(parents=True)
    task = pickle.loads(pickle.dumps(ShardTask(plan, 2, staging, subdirs, "numpy", threads=2)))
    assert task == ShardTask(plan, 2, staging, subdirs, "numpy", threads=2)
    seen = []
    records = compute_shard(task, seen.append)
    assert len(records) == 2 and sum(seen) == 2 * plan.shards[2].data_bytes
    write_plan(plan, tmp_path / "out", backend="numpy")
    name = plan.shards[2].filename
    for sub, record in zip(subdirs, records):
        assert check_file(staging / sub / name, record) is None
        assert (staging / sub / name).read_bytes() == (tmp_path / "out" / sub / name).read_bytes()


def test_ray_executor_without_ray_is_one_line_before_anything_is_written(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(BackendUnavailableError, match=r"pip install 'expo-stream\[ray\]'"):
        RayExecutor()
