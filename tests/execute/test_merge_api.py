"""The public merge API (expo_stream/execute/merge.py): make_options, plan_merge, merge,
write_plan, MergeResult, inputs_differ; and sinks.local.plan_fingerprint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from expo_stream.errors import PlanError, UsageError
from expo_stream.execute.merge import (
    inputs_differ, make_options, merge, plan_merge, write_plan,
)
from expo_stream.sinks.local import plan_fingerprint

from ..helpers import load_all, tiny_pair


def test_make_options_from_flags(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    opts = make_options(str(sft), dpo, alpha="0.3,0.5", dtype="fp32", max_shard_size="1KB",
                        copy_unmatched=True, dpo_name="org/dpo")
    assert (opts.sft, opts.dpo, opts.dtype, opts.max_shard_size) == (sft, dpo, "F32", 1000)
    assert [s.alpha for s in opts.schedules] == [0.3, 0.5]
    assert opts.copy_unmatched and opts.dpo_name == "org/dpo" and opts.sft_name is None


def test_make_options_from_a_recipe_with_flag_overrides(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path / "models")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft: models/sft\ndpo: models/dpo\nalpha: 0.3\ndtype: bf16\n")
    opts = make_options(recipe=recipe, dtype="fp16", max_shard_size=500)
    assert Path(opts.sft).resolve() == sft.resolve() and opts.dtype == "F16"
    assert opts.max_shard_size == 500 and opts.schedules[0].alpha == 0.3
    with pytest.raises(UsageError, match="give α either in the recipe or as flags, not both"):
        make_options(recipe=recipe, alpha=1)


def test_make_options_refusals_name_the_recipe(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    with pytest.raises(UsageError, match="both --sft and --dpo"):
        make_options(sft, None, alpha=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft: nowhere\ndpo: dpo\nalpha: 1\n")
    with pytest.raises(UsageError) as info:
        make_options(recipe=recipe)
    assert str(info.value).startswith(f"{recipe}: ")
    assert "relative paths are read from the recipe's directory" in str(info.value)


def test_plan_merge_then_write_plan_equals_merge(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    plan = plan_merge(make_options(sft, dpo, alpha=0.3, max_shard_size="1KB"))
    assert len(plan.tensors) == 39 and len(plan.shards) > 1
    result = write_plan(plan, tmp_path / "a", backend="numpy", threads=2, chunk_elements=7)
    again = merge(sft, dpo, tmp_path / "b", alpha=0.3, max_shard_size="1KB", backend="numpy")
    assert result.outputs == ((tmp_path / "a").resolve(),)
    assert {k: v.tobytes() for k, v in load_all(tmp_path / "a").items()} == {
        k: v.tobytes() for k, v in load_all(tmp_path / "b").items()}
    assert again.written == plan.output_bytes


def test_several_schedules_give_one_directory_each(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    result = merge(sft, dpo, tmp_path / "out", alpha="0.3,0.5", backend="numpy")
    assert result.outputs == ((tmp_path / "out" / "alpha-0.3").resolve(),
                              (tmp_path / "out" / "alpha-0.5").resolve())
    a, b = (load_all(p) for p in result.outputs)
    assert a.keys() == b.keys() and any(a[k].tobytes() != b[k].tobytes() for k in a)


def test_summary_is_one_line_and_repr_is_short(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    result = merge(sft, dpo, tmp_path / "out", alpha=0.3, backend="numpy")
    summary = result.summary()
    assert summary.startswith("merged 39 tensors into 1 shard(s) x 1 output(s), ")
    assert summary.endswith(" with numpy") and "\n" not in summary and len(summary) < 200
    assert repr(result) == f"MergeResult(outputs={[str((tmp_path / 'out').resolve())]!r}, backend='numpy')"


def test_inputs_differ(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    assert inputs_differ(plan_merge(make_options(sft, dpo, alpha=1)))
    shutil.copytree(dpo, tmp_path / "copy")
    same = plan_merge(make_options(tmp_path / "copy", dpo, alpha=1))
    assert not inputs_differ(same)
    assert not inputs_differ(same, chunk_bytes=3)
    with pytest.raises(PlanError, match="hold identical tensors"):
        write_plan(same, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    sft32, dpo32, _, _ = tiny_pair(tmp_path / "d", "F32", "BF16")
    assert inputs_differ(plan_merge(make_options(sft32, dpo32, alpha=1)))


def test_inputs_differ_finds_one_changed_byte_late_in_a_tensor(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    shutil.copytree(dpo, tmp_path / "copy")
    plan = plan_merge(make_options(tmp_path / "copy", dpo, alpha=1))
    last = plan.tensors[-1].sft
    with open(last.file.path, "r+b") as f:
        f.seek(last.end - 1)
        byte = f.read(1)
        f.seek(last.end - 1)
        f.write(bytes([byte[0] ^ 1]))
    assert inputs_differ(plan, chunk_bytes=4)


def test_plan_fingerprint_follows_alpha_dtype_and_inputs(tmp_path):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    base = plan_fingerprint(plan_merge(make_options(sft, dpo, alpha=0.3)))
    assert plan_fingerprint(plan_merge(make_options(sft, dpo, alpha=0.3))) == base
    assert plan_fingerprint(plan_merge(make_options(sft, dpo, alpha=0.4))) != base
    assert plan_fingerprint(plan_merge(make_options(sft, dpo, alpha=0.3, dtype="fp32"))) != base
    file = sft / "model.safetensors"
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert plan_fingerprint(plan_merge(make_options(sft, dpo, alpha=0.3))) != base
