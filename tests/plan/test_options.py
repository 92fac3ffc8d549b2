"""Option parsing and recipes (expo_stream/plan/options.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from expo_stream.errors import AlphaOutOfRangeError, UsageError
from expo_stream.plan.options import (
    build_schedules, load_recipe, parse_alpha_list, parse_dtype, parse_size, read_recipe,
)
from expo_stream.plan.schedule import Rule


def test_build_schedules_one_schedule_per_alpha():
    schedules = build_schedules(alpha="0.3,2")
    assert [s.alpha for s in schedules] == [0.3, 2.0]
    assert [s.label for s in schedules] == ["alpha-0.3", "alpha-2"]


def test_build_schedules_layer_forms_and_rules():
    (s,) = build_schedules(layer_alphas="1,2", non_layer_alpha="5",
                           rules=[{"match": "lm_head", "alpha": 0}])
    assert (s.layer_alphas, s.non_layer_alpha, s.rules) == ((1.0, 2.0), 5.0, (Rule("lm_head", 0.0),))
    (s,) = build_schedules(per_layer=[1, 2, 3])
    assert s.per_layer == (1.0, 2.0, 3.0) and s.alpha is None


@pytest.mark.parametrize("values, fragment", [
    ({}, "exactly one"),
    ({"alpha": 1, "layer_alphas": "1,2"}, "exactly one"),
    ({"alpha": "0.3,0.3"}, "repeats a value"),
    ({"alpha": 1, "non_layer_alpha": 2}, "goes with --layer-alphas"),
    ({"alpha": 1, "rules": [{"match": "x"}]}, "need exactly the keys `match` and `alpha`"),
    ({"alpha": 1, "rules": [{"match": "(", "alpha": 1}]}, "is not a valid regex"),
])
def test_build_schedules_refusals(values, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        build_schedules(**values)


def test_parse_alpha_list():
    assert parse_alpha_list("0.5, 1,2e0", "alpha") == (0.5, 1.0, 2.0)
    assert parse_alpha_list([0.5, "3"], "alpha") == (0.5, 3.0)
    assert parse_alpha_list(0.25, "alpha") == (0.25,)


@pytest.mark.parametrize("text, error, fragment", [
    ("0.3,", UsageError, "must be comma-separated numbers"),
    ("", UsageError, "must be comma-separated numbers"),
    ("abc", UsageError, "'abc' is not a number"),
    ("nan", UsageError, "not a finite number"),
    ([True], UsageError, "is not a number"),
    ("1e300", AlphaOutOfRangeError, "outside the supported range"),
])
def test_parse_alpha_list_refusals(text, error, fragment):
    with pytest.raises(error, match=fragment) as info:
        parse_alpha_list(text, "layer alphas")
    if error is UsageError:
        assert str(info.value).startswith("layer alphas: ")


@pytest.mark.parametrize("text, value", [
    ("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("1.5MB", 1_500_000), ("500", 500), ("10kb", 10_000),
    (" 3 MiB ", 3 * 2**20), (1234, 1234),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "0GB", "5 GBs", True, 0])
def test_parse_size_refusals(text):
    with pytest.raises(UsageError, match="max shard size"):
        parse_size(text)


@pytest.mark.parametrize("text, name", [("bf16", "BF16"), ("FP16", "F16"), ("float32", "F32"),
                                        ("f32", "F32"), (None, None)])
def test_parse_dtype(text, name):
    assert parse_dtype(text) == name


def test_parse_dtype_refusal():
    with pytest.raises(UsageError, match="dtype 'int8': choose bf16, fp16 or fp32"):
        parse_dtype("int8")


@pytest.mark.parametrize("text, fragment", [
    (None, "cannot read recipe"),
    ("alpha: [1\n", "recipe is not valid YAML"),
    ("- 1\n- 2\n", "recipe must be a mapping"),
    ("alpha: 1\nalhpa: 2\n", "unknown recipe keys ['alhpa']"),
    ("sft: 3\n", "sft must be a string, not 3"),
])
def test_read_recipe_errors_name_the_file(tmp_path, text, fragment):
    recipe = tmp_path / "r.yaml"
    if text is not None:
        recipe.write_text(text)
    with pytest.raises(UsageError) as info:
        read_recipe(recipe)
    assert str(info.value).startswith(f"{recipe}: ") and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_relative_paths_resolve_against_the_recipe_directory(tmp_path, monkeypatch):
    (tmp_path / "models" / "sft").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("sft: ../models/sft\ndpo: org/dpo-model\nalpha: 1\n")
    monkeypatch.chdir(tmp_path / "elsewhere" / "deep")  # where ../models/sft is no model
    data = read_recipe(recipe)
    assert Path(data["sft"]).resolve() == (tmp_path / "models" / "sft").resolve()
    assert data["dpo"] == "org/dpo-model"  # not a path beside the recipe: kept as written
    absolute = tmp_path / "models" / "sft"
    recipe.write_text(f"sft: {absolute}\ndpo: x\nalpha: 1\n")
    assert read_recipe(recipe)["sft"] == str(absolute)


def test_load_recipe_options_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft: a\ndpo: b\nlayer_alphas: [1, 2]\nnon_layer_alpha: 3\ndtype: fp16\n"
                      "max_shard_size: 1MB\ncopy_unmatched: true\ndpo_name: org/b\n")
    opts = load_recipe(recipe)
    assert (opts.sft, opts.dpo, opts.dtype, opts.max_shard_size, opts.copy_unmatched) == (
        Path("a"), Path("b"), "F16", 10**6, True)
    assert opts.schedules[0].layer_alphas == (1.0, 2.0) and opts.dpo_name == "org/b"
    assert load_recipe(recipe, sft=tmp_path / "other").sft == tmp_path / "other"


@pytest.mark.parametrize("text, fragment", [
    ("dpo: b\nalpha: 1\n", "must name both sft and dpo"),
    ("sft: a\ndpo: b\nalpha: x\n", "alpha: 'x' is not a number"),
    ("sft: a\ndpo: b\nalpha: 1\ndtype: int4\n", "dtype 'int4'"),
    ("sft: a\ndpo: b\nalpha: 1\nmax_shard_size: big\n", "max shard size 'big'"),
])
def test_load_recipe_errors_name_the_file(tmp_path, text, fragment):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert str(info.value).startswith(f"{recipe}: ") and fragment in str(info.value)
