"""build_plan (expo_stream/plan/planner.py): pairing, α, dtypes, shard layout, mismatches.

The checkpoints here are header tables only: their files do not exist, so a plan that read a
byte of tensor data would fail with an OSError instead of giving its answer or its PlanError.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expo_stream.errors import PlanError
from expo_stream.format.checkpoint import Checkpoint, group_shards, shard_name
from expo_stream.format.dtypes import ITEMSIZE
from expo_stream.format.files import InputFile
from expo_stream.format.safetensors import TensorInfo, parse_header
from expo_stream.plan.options import MergeOptions, build_schedules
from expo_stream.plan.planner import SHOWN, build_plan

CONFIG = {"model_type": "llama", "num_hidden_layers": 3, "hidden_size": 4}


def checkpoint(root: Path, tensors: dict, config: dict | None = None) -> Checkpoint:
    """A checkpoint of ``name -> (dtype, shape)`` in one file that is never created."""
    path = InputFile("local", str(root / "model.safetensors"), 0, "0")
    infos, offset = {}, 64
    for name, (dtype, shape) in tensors.items():
        n = ITEMSIZE[dtype]
        for dim in shape:
            n *= dim
        infos[name] = TensorInfo(name, dtype, tuple(shape), path, offset, offset + n)
        offset += n
    return Checkpoint(root=root, files=(path,), tensors=infos,
                      config=dict(CONFIG if config is None else config))


def model(layers: int = 3, dtype: str = "BF16", extra: dict | None = None) -> dict:
    tensors = {"model.embed_tokens.weight": (dtype, (6, 4))}
    for i in range(layers):
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = (dtype, (4, 4))
        tensors[f"model.layers.{i}.input_layernorm.weight"] = (dtype, (4,))
    tensors["model.norm.weight"] = (dtype, (4,))
    tensors["lm_head.weight"] = (dtype, (6, 4))
    tensors.update(extra or {})
    return tensors


def options(**values) -> MergeOptions:
    schedule_keys = ("alpha", "layer_alphas", "per_layer", "non_layer_alpha", "rules")
    schedules = build_schedules(**{k: values.pop(k) for k in schedule_keys if k in values})
    return MergeOptions(sft=Path("sft"), dpo=Path("dpo"), schedules=schedules, **values)


def plan_of(tmp_path, sft: dict, dpo: dict, sft_config=None, dpo_config=None, **values):
    return build_plan(checkpoint(tmp_path / "sft", sft, sft_config),
                      checkpoint(tmp_path / "dpo", dpo, dpo_config), options(**values))


def by_name(plan) -> dict:
    return {t.name: t for t in plan.tensors}


# Pairing


def test_tensors_pair_by_name_in_dpo_order_whatever_the_sft_order(tmp_path):
    dpo = model()
    sft = dict(reversed(list(dpo.items())))  # same tensors, other order, other offsets
    sft_ck = checkpoint(tmp_path / "sft", sft)
    plan = build_plan(sft_ck, checkpoint(tmp_path / "dpo", dpo), options(alpha=0.5))
    assert [t.name for t in plan.tensors] == list(dpo)
    for job in plan.tensors:
        assert job.sft == sft_ck.tensors[job.name]
        assert job.dpo.name == job.sft.name == job.name


def test_a_plan_reads_no_tensor_data(tmp_path):
    plan = plan_of(tmp_path, model(), model(), alpha=0.5)
    assert not any(f.path.exists() for f in (*plan.sft.files, *plan.dpo.files))
    assert len(plan.tensors) == len(model())


# α per tensor


def test_uniform_alpha_for_every_tensor_and_one_alpha_per_schedule(tmp_path):
    plan = plan_of(tmp_path, model(), model(), alpha=[0.3, 2.0])
    assert {t.alphas for t in plan.tensors} == {(0.3, 2.0)}
    assert {t.why for t in plan.tensors} == {("uniform", "uniform")}


def test_layer_groups_and_non_layer_tensors_take_the_first_group(tmp_path):
    plan = plan_of(tmp_path, model(layers=3), model(layers=3), layer_alphas="1,2,3")
    jobs = by_name(plan)
    for i in range(3):
        assert jobs[f"model.layers.{i}.mlp.up_proj.weight"].alphas == (float(i + 1),)
        assert jobs[f"model.layers.{i}.mlp.up_proj.weight"].why == (f"group {i}",)
        assert jobs[f"model.layers.{i}.mlp.up_proj.weight"].layer.index == i
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert jobs[name].alphas == (1.0,)
        assert jobs[name].why == ("non-layer (first layer α)",)
        assert jobs[name].layer is None


def test_non_layer_alpha_and_rules_take_precedence(tmp_path):
    plan = plan_of(tmp_path, model(), model(), layer_alphas=[1, 2, 3], non_layer_alpha=7,
                   rules=[{"match": r"layers\.1\.mlp", "alpha": 0.0}])
    jobs = by_name(plan)
    assert jobs["lm_head.weight"].alphas == (7.0,) and jobs["lm_head.weight"].why == ("non-layer",)
    assert jobs["model.layers.1.mlp.up_proj.weight"].alphas == (0.0,)
    assert jobs["model.layers.1.mlp.up_proj.weight"].why == (r"rule /layers\.1\.mlp/",)
    assert jobs["model.layers.1.input_layernorm.weight"].alphas == (2.0,)


def test_per_layer_alphas_by_layer_index(tmp_path):
    plan = plan_of(tmp_path, model(), model(), per_layer=[0.5, 1.5, 2.5])
    jobs = by_name(plan)
    assert [jobs[f"model.layers.{i}.input_layernorm.weight"].alphas for i in range(3)] == [
        (0.5,), (1.5,), (2.5,)]


@pytest.mark.parametrize("name, stack, index", [
    ("transformer.h.2.attn.c_attn.weight", "transformer.h", 2),
    ("gpt_neox.layers.0.mlp.weight", "gpt_neox.layers", 0),
    ("vision_model.encoder.layers.1.fc.weight", "vision_model.encoder.layers", 1),
    ("model.language_model.layers.2.q.weight", "model.language_model.layers", 2),
    ("blocks.1.ff.weight", "blocks", 1),
])
def test_layer_index_parsing_across_architectures(tmp_path, name, stack, index):
    tensors = {name: ("F32", (2,)), "embed.weight": ("F32", (2,))}
    plan = plan_of(tmp_path, tensors, tensors, sft_config={}, dpo_config={}, layer_alphas=[1, 2])
    job = by_name(plan)[name]
    assert (job.layer.stack, job.layer.index, job.layer.count) == (stack, index, index + 1)
    assert by_name(plan)["embed.weight"].layer is None


def test_two_stacks_count_their_layers_apart(tmp_path):
    tensors = {f"vision.layers.{i}.w": ("F32", (2,)) for i in range(4)}
    tensors.update({f"text.layers.{i}.w": ("F32", (2,)) for i in range(2)})
    plan = plan_of(tmp_path, tensors, tensors, sft_config={}, dpo_config={}, layer_alphas=[1, 2])
    jobs = by_name(plan)
    assert [jobs[f"vision.layers.{i}.w"].alphas[0] for i in range(4)] == [1, 1, 2, 2]
    assert [jobs[f"text.layers.{i}.w"].alphas[0] for i in range(2)] == [1, 2]


def test_more_groups_than_layers_is_a_short_warning_naming_the_unused_alphas(tmp_path):
    plan = plan_of(tmp_path, model(layers=2), model(layers=2), layer_alphas="1,2,3",
                   dpo_config={"num_hidden_layers": 2})
    (warning,) = plan.warnings
    assert "'model.layers' has 2 layer(s) for 3 groups" in warning
    assert warning.endswith("α 1 apply to none of them")  # groups start at floor(j*2/3): 0, 0, 1
    assert "\n" not in warning and len(warning) < 200


def test_no_warning_when_groups_fit(tmp_path):
    assert plan_of(tmp_path, model(), model(), layer_alphas="1,2,3").warnings == ()
    assert plan_of(tmp_path, model(), model(), alpha=1).warnings == ()


def test_layer_alphas_on_a_model_without_layers_is_a_plan_error(tmp_path):
    tensors = {"a.weight": ("F32", (2,)), "b.weight": ("F32", (2,))}
    with pytest.raises(PlanError, match="layer α given but no tensor name holds a layer index"):
        plan_of(tmp_path, tensors, tensors, sft_config={}, dpo_config={}, layer_alphas="1,2")
    # a uniform α needs no layers
    assert len(plan_of(tmp_path, tensors, tensors, alpha=1).tensors) == 2


def test_per_layer_list_of_the_wrong_length_is_a_plan_error(tmp_path):
    with pytest.raises(PlanError, match="per-layer list has 2 values but stack 'model.layers' "
                                        "has 3 layers"):
        plan_of(tmp_path, model(), model(), per_layer=[1, 2])


def test_layer_count_must_match_the_config(tmp_path):
    with pytest.raises(PlanError) as info:
        plan_of(tmp_path, model(layers=3), model(layers=3), alpha=1,
                dpo_config={"num_hidden_layers": 4})
    message = str(info.value)
    assert str(tmp_path / "dpo" / "config.json") in message
    assert "num_hidden_layers is 4 but tensor names under 'model.layers' hold 3 layers" in message


# dtypes


def test_output_dtype_is_dpos_per_tensor_unless_given(tmp_path):
    sft = model(dtype="F32", extra={"x.weight": ("F16", (3,))})
    dpo = model(dtype="BF16", extra={"x.weight": ("F32", (3,))})
    jobs = by_name(plan_of(tmp_path, sft, dpo, alpha=1))
    assert jobs["lm_head.weight"].dtype == "BF16" and jobs["x.weight"].dtype == "F32"
    jobs = by_name(plan_of(tmp_path, sft, dpo, alpha=1, dtype="F16"))
    assert {t.dtype for t in jobs.values()} == {"F16"}
    assert jobs["lm_head.weight"].nbytes == 6 * 4 * 2


def test_integer_tensors_are_copied_from_dpo_in_their_own_dtype(tmp_path):
    extra = {"ids": ("I64", (5,)), "mask": ("BOOL", (5,))}
    jobs = by_name(plan_of(tmp_path, model(extra=extra), model(extra=extra), alpha=1, dtype="F32"))
    for name, dtype in (("ids", "I64"), ("mask", "BOOL")):
        assert jobs[name].sft is None and jobs[name].alphas == () and jobs[name].dtype == dtype


@pytest.mark.parametrize("sft_dtype, dpo_dtype, fragment", [
    ("I32", "F32", "tensor 'x': dtypes I32 (SFT) and F32 (DPO) are not mergeable"),
    ("F32", "I64", "tensor 'x': dtypes F32 (SFT) and I64 (DPO) are not mergeable"),
    ("F64", "F32", "tensor 'x': SFT dtype F64 is not supported (BF16, F16, F32)"),
    ("F32", "F8_E4M3", "tensor 'x': DPO dtype F8_E4M3 is not supported"),
    ("I32", "I64", "tensor 'x': integer dtypes differ, I32 (SFT) vs I64 (DPO)"),
])
def test_dtype_mismatches_are_plan_errors(tmp_path, sft_dtype, dpo_dtype, fragment):
    with pytest.raises(PlanError) as info:
        plan_of(tmp_path, model(extra={"x": (sft_dtype, (3,))}),
                model(extra={"x": (dpo_dtype, (3,))}), alpha=1)
    assert fragment in str(info.value)


# Shard layout


@pytest.mark.parametrize("max_size", [1, 40, 100, 10**9])
def test_shards_follow_group_shards_and_shard_name(tmp_path, max_size):
    plan = plan_of(tmp_path, model(), model(), alpha=1, max_shard_size=max_size)
    jobs = list(by_name(plan).values())
    groups = group_shards([j.nbytes for j in jobs], max_size)
    assert [[t.name for t in s.tensors] for s in plan.shards] == [
        [jobs[k].name for k in g] for g in groups]
    assert [s.filename for s in plan.shards] == [shard_name(i, len(groups)) for i in range(len(groups))]
    assert [s.index for s in plan.shards] == list(range(len(groups)))
    assert plan.weight_map() == {t.name: s.filename for s in plan.shards for t in s.tensors}


def test_one_shard_is_model_safetensors_and_several_are_numbered(tmp_path):
    assert [s.filename for s in plan_of(tmp_path, model(), model(), alpha=1).shards] == [
        "model.safetensors"]
    names = [s.filename for s in plan_of(tmp_path, model(), model(), alpha=1,
                                         max_shard_size=80).shards]
    assert len(names) > 1 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"


def test_each_shard_header_places_every_tensor_at_its_planned_offset(tmp_path):
    plan = plan_of(tmp_path, model(dtype="F32"), model(dtype="BF16"), alpha=1, dtype="F32",
                   max_shard_size=100)
    for shard in plan.shards:
        size = shard.file_bytes
        header = parse_header(Path(shard.filename), shard.header, size)
        assert header.data_start == len(shard.header)
        offset = 0
        for job, info in zip(shard.tensors, header.tensors, strict=True):
            assert job.offset == offset
            assert (info.name, info.dtype, info.shape) == (job.name, job.dtype, job.shape)
            assert (info.start, info.end) == (len(shard.header) + offset,
                                              len(shard.header) + offset + job.nbytes)
            offset += job.nbytes
        assert offset == shard.data_bytes
        assert header.metadata == {"format": "pt"}
    assert plan.output_bytes == sum(t.nbytes for t in plan.tensors)
    assert plan.input_bytes == sum(t.dpo.nbytes + t.sft.nbytes for t in plan.tensors)


# Mismatches: all at once, as PlanError, before any data is read


def test_only_in_sft_is_an_error(tmp_path):
    with pytest.raises(PlanError, match=r"1 tensor\(s\) only in SFT: 'sft.only'"):
        plan_of(tmp_path, model(extra={"sft.only": ("F32", (2,))}), model(), alpha=1)


def test_only_in_dpo_needs_copy_unmatched_and_then_is_copied(tmp_path):
    sft, dpo = model(), model(extra={"dpo.only": ("F32", (2,))})
    with pytest.raises(PlanError, match=r"only in DPO \(use --copy-unmatched to copy them\): "
                                        "'dpo.only'"):
        plan_of(tmp_path, sft, dpo, alpha=1)
    job = by_name(plan_of(tmp_path, sft, dpo, alpha=1, copy_unmatched=True))["dpo.only"]
    assert job.sft is None and job.alphas == () and job.dtype == "F32"


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    with pytest.raises(PlanError, match=r"tensor 'model.norm.weight': shape \[5\] in SFT vs "
                                        r"\[4\] in DPO"):
        plan_of(tmp_path, model(extra={"model.norm.weight": ("BF16", (5,))}), model(), alpha=1)


def test_every_kind_of_mismatch_in_one_error(tmp_path):
    sft = model(extra={"sft.only": ("F32", (2,)), "model.norm.weight": ("BF16", (5,)),
                       "x": ("I32", (3,))})
    dpo = model(extra={"dpo.only": ("F32", (2,)), "x": ("F32", (3,))})
    with pytest.raises(PlanError) as info:
        plan_of(tmp_path, sft, dpo, alpha=1)
    message = str(info.value)
    for fragment in ("only in SFT: 'sft.only'", "only in DPO", "'dpo.only'",
                     "2 tensor(s) differ in shape or dtype", "'model.norm.weight'", "'x'"):
        assert fragment in message, fragment
    assert message.startswith(f"SFT {tmp_path / 'sft'} and DPO {tmp_path / 'dpo'} cannot be merged")


def test_many_mismatches_give_a_short_one_line_message(tmp_path):
    many = 200
    sft = model(extra={f"s.{i}": ("F32", (1,)) for i in range(many)}
                | {f"m.{i}": ("F32", (2,)) for i in range(many)})
    dpo = model(extra={f"d.{i}": ("F32", (1,)) for i in range(many)}
                | {f"m.{i}": ("F32", (3,)) for i in range(many)})
    with pytest.raises(PlanError) as info:
        plan_of(tmp_path, sft, dpo, alpha=1)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000
    assert f"{many} tensor(s) only in SFT: 's.0', 's.1', 's.2' and {many - SHOWN} more" in message
    assert f"{many} tensor(s) differ in shape or dtype" in message
    assert f"and {many - SHOWN} more" in message
    assert "'m.3'" not in message


def test_a_config_difference_is_said_first(tmp_path):
    with pytest.raises(PlanError) as info:
        plan_of(tmp_path, model(extra={"model.norm.weight": ("BF16", (5,))}), model(),
                sft_config=dict(CONFIG, hidden_size=5), alpha=1)
    message = str(info.value)
    assert "cannot be merged: configs differ (hidden_size 5 vs 4); 1 tensor(s) differ" in message


def test_the_same_files_as_both_inputs_are_refused(tmp_path):
    same = checkpoint(tmp_path / "m", model())
    with pytest.raises(PlanError, match="are the same files"):
        build_plan(same, same, options(alpha=1))

