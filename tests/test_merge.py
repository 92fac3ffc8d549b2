"""End to end: the CLI on tiny checkpoints, output checked bit for bit against the oracle."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import expo_stream
from expo_stream.cli import main
from expo_stream.execute.executor import DEFAULT_CHUNK_ELEMENTS
from expo_stream.sources.local import LocalFile
from expo_stream.plan.schedule import group_of

from .helpers import DT, TINY, bits, load_all, safetensors_loads, tiny_pair
from .kernels.oracle import oracle
from .kernels.backends import AVAILABLE


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def expected_alpha(name: str, layers: int, groups: tuple | None, uniform: float | None) -> float:
    if uniform is not None:
        return uniform
    if name.startswith("model.layers."):
        return groups[group_of(int(name.split(".")[2]), layers, len(groups))]
    return groups[0]


def assert_matches_oracle(out, sft, dpo, out_dtype, alpha=None, groups=None, layers=4):
    merged = load_all(out)
    assert set(merged) == set(dpo)
    for name, d in dpo.items():
        a = expected_alpha(name, layers, groups, alpha)
        want = oracle(d.reshape(-1), sft[name].reshape(-1), a, out_dtype or _name(d.dtype))
        got = merged[name]
        assert got.shape == d.shape
        assert np.array_equal(bits(got), want), name


def _name(dtype):
    return {v: k for k, v in DT.items()}[dtype]


@pytest.mark.parametrize("sft_dtype,dpo_dtype", list(itertools.product(DT, DT)))
def test_every_dtype_combination_uniform_alpha(tmp_path, sft_dtype, dpo_dtype):
    sft_dir, dpo_dir, sft, dpo = tiny_pair(tmp_path, sft_dtype, dpo_dtype)
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out",
            "--alpha", "0.3", "--quiet")
    assert r.exit_code == 0, r.output
    assert_matches_oracle(tmp_path / "out", sft, dpo, None, alpha=0.3)


@pytest.mark.parametrize("out_dtype", ["bf16", "fp16", "fp32"])
def test_output_dtype_and_layer_groups(tmp_path, out_dtype):
    sft_dir, dpo_dir, sft, dpo = tiny_pair(tmp_path, "F32", "BF16")
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out",
            "--layer-alphas", "5,10,15", "--dtype", out_dtype, "--quiet", "--max-shard-size", "500B")
    assert r.exit_code == 0, r.output
    name = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}[out_dtype]
    assert_matches_oracle(tmp_path / "out", sft, dpo, name, groups=(5.0, 10.0, 15.0))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[name]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(
        v.size * DT[name].itemsize for v in dpo.values())
    assert safetensors_loads(tmp_path / "out") == len(dpo)


def test_layer_group_boundaries_32_layers(tmp_path):
    """32 layers in 3 groups: 0-9, 10-20, 21-31, as the layerwise extension splits them."""
    config = dict(TINY, num_hidden_layers=32, hidden_size=4, intermediate_size=4, vocab_size=4,
                  num_attention_heads=1, num_key_value_heads=1)
    sft_dir, dpo_dir, sft, dpo = tiny_pair(tmp_path, config=config)
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out",
            "--layer-alphas", "5,10,15", "--non-layer-alpha", "0.5", "--quiet")
    assert r.exit_code == 0, r.output
    recipe = json.loads((tmp_path / "out" / "expo_recipe.json").read_text())["tensors"]
    for layer, alpha in [(0, 5), (9, 5), (10, 10), (20, 10), (21, 15), (31, 15)]:
        assert recipe[f"model.layers.{layer}.mlp.up_proj.weight"]["alpha"] == alpha
    assert recipe["lm_head.weight"]["alpha"] == 0.5
    merged = load_all(tmp_path / "out")
    name = "model.layers.21.self_attn.q_proj.weight"
    assert np.array_equal(bits(merged[name]), oracle(dpo[name].reshape(-1), sft[name].reshape(-1), 15.0, "BF16"))


def test_several_alphas_in_one_pass_read_inputs_once(tmp_path, monkeypatch):
    sft_dir, dpo_dir, sft, dpo = tiny_pair(tmp_path)
    reads = []
    original = LocalFile.read_into

    def counting(self, offset, buffer):
        reads.append((self.path, offset, buffer.nbytes))
        return original(self, offset, buffer)

    monkeypatch.setattr(LocalFile, "read_into", counting)
    result = expo_stream.merge(sft_dir, dpo_dir, tmp_path / "out", alpha="0.3,0.5,2")
    assert [p.name for p in result.outputs] == ["alpha-0.3", "alpha-0.5", "alpha-2"]
    assert len(reads) == len(set(reads)) == 2 * len(dpo)  # each input range read once
    for alpha, path in zip((0.3, 0.5, 2.0), result.outputs):
        assert_matches_oracle(path, sft, dpo, None, alpha=alpha)


def test_bits_do_not_depend_on_backend_threads_chunks_or_shards(tmp_path):
    sft_dir, dpo_dir, sft, dpo = tiny_pair(tmp_path, "F32", "BF16")
    reference = None
    cases = [(b, t, c, m) for b in AVAILABLE for t, c, m in [(1, DEFAULT_CHUNK_ELEMENTS, "5GB"),
                                                             (3, 7, "300B"), (2, 64, "1KB")]]
    for i, (backend, threads, chunk, shard) in enumerate(cases):
        out = tmp_path / f"o{i}"
        expo_stream.merge(sft_dir, dpo_dir, out, alpha=2.5, backend=backend, threads=threads,
                          chunk_elements=chunk, max_shard_size=shard)
        tensors = {k: bits(v).tobytes() for k, v in load_all(out).items()}
        reference = reference or tensors
        assert tensors == reference, (backend, threads, chunk, shard)


def test_non_float_tensors_are_copied_and_unmatched_need_a_flag(tmp_path):
    ids = np.arange(10, dtype=np.int64)
    extra = {"model.rotary.inv_freq_ids": (ids, ids + 1), "extra.only_dpo": (None, np.ones(3, np.float32))}
    sft_dir, dpo_dir, sft, dpo = tiny_pair(tmp_path, extra=extra)
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out", "--alpha", "0.3")
    assert r.exit_code == 1
    assert "only in DPO" in r.output and "'extra.only_dpo'" in r.output
    assert not (tmp_path / "out").exists()
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out", "--alpha",
            "0.3", "--copy-unmatched", "--quiet")
    assert r.exit_code == 0, r.output
    merged = load_all(tmp_path / "out")
    assert merged["model.rotary.inv_freq_ids"].tolist() == (ids + 1).tolist()  # DPO's
    assert merged["extra.only_dpo"].tolist() == [1, 1, 1]


@pytest.mark.parametrize("change,fragment", [
    ({"model.norm.weight": (np.ones(3, np.float32), None)}, "shape [3] in SFT vs [8] in DPO"),
    ({"model.norm.weight": (np.ones(8, np.int32), None)}, "not mergeable"),
    ({"sft.only": (np.ones(2, np.float32), None)}, "only in SFT"),
])
def test_mismatches_are_one_clear_error_and_nothing_is_written(tmp_path, change, fragment):
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path, extra=change)
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out", "--alpha", "1")
    assert r.exit_code == 1
    assert fragment in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


@pytest.mark.parametrize("args,fragment", [
    (["--alpha", "abc"], "not a number"),
    (["--alpha", "1e300"], "outside the supported range"),
    (["--alpha", "0.3", "--layer-alphas", "1,2"], "exactly one"),
    (["--alpha", "0.3", "--non-layer-alpha", "1"], "goes with --layer-alphas"),
    (["--alpha", "0.3", "--max-shard-size", "lots"], "max shard size"),
])
def test_bad_usage_exits_2(tmp_path, args, fragment):
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path)
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out", *args)
    assert r.exit_code == 2, r.output
    assert fragment in r.output


def test_layer_alphas_need_layers(tmp_path):
    arrays = {"w": np.ones(4, np.float32)}
    from expo_stream.format.writer import save_checkpoint

    save_checkpoint(tmp_path / "a", arrays)
    save_checkpoint(tmp_path / "b", arrays)
    r = run("merge", "--sft", tmp_path / "a", "--dpo", tmp_path / "b", "--out", tmp_path / "o",
            "--layer-alphas", "1,2")
    assert r.exit_code == 1 and "no tensor name holds a layer index" in r.output


def test_existing_output_and_output_inside_input(tmp_path):
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path)
    (tmp_path / "out").mkdir()
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out", "--alpha", "1")
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out", "--alpha", "1",
            "--overwrite", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", dpo_dir / "merged", "--alpha", "1")
    assert r.exit_code == 2 and "inside the input" in r.output


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path)
    r = run("merge", "--sft", sft_dir, "--dpo", dpo_dir, "--out", tmp_path / "out",
            "--layer-alphas", "5,10", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "model.layers layers 0-1: alpha=5 (group 0)" in r.output
    assert "model.layers layers 2-3: alpha=10 (group 1)" in r.output
    assert "output shards (1):" in r.output
    assert not (tmp_path / "out").exists()


def test_recipe_with_rules_and_per_layer(tmp_path):
    sft_dir, dpo_dir, sft, dpo = tiny_pair(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"sft: {sft_dir}\ndpo: {dpo_dir}\nper_layer: [1, 2, 3, 4]\n"
                      "non_layer_alpha: 0.5\nrules:\n  - {match: 'mlp\\.down', alpha: 7}\n"
                      "dtype: fp32\n")
    r = run("merge", "--recipe", recipe, "--out", tmp_path / "out", "--quiet")
    assert r.exit_code == 0, r.output
    merged = load_all(tmp_path / "out")
    tensors = json.loads((tmp_path / "out" / "expo_recipe.json").read_text())["tensors"]
    for name, d in dpo.items():
        if ".mlp.down" in name:
            alpha = 7.0
        elif name.startswith("model.layers."):
            alpha = float(int(name.split(".")[2]) + 1)
        else:
            alpha = 0.5
        assert tensors[name]["alpha"] == alpha
        assert np.array_equal(bits(merged[name]), oracle(d.reshape(-1), sft[name].reshape(-1), alpha, "F32"))


def test_recipe_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("alpha: 0.3\nbogus: 1\n")
    r = run("merge", "--recipe", recipe, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "unknown recipe keys" in r.output
    recipe.write_text("alpha: [0.3\n")
    r = run("merge", "--recipe", recipe, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "not valid YAML" in r.output


def test_demo_command(tmp_path):
    r = run("demo", "--dir", tmp_path / "demo")
    assert r.exit_code == 0, r.output
    assert "merged 57 tensors" in r.output
    assert os.path.isfile(tmp_path / "demo" / "merged" / "model.safetensors")


def test_import_does_not_pull_torch():
    import subprocess
    import sys

    code = ("import expo_stream, expo_stream.cli, sys; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_works_without_the_native_extension():
    """Where the C++ build failed, auto falls back to Numba (then NumPy) with the same bits."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['expo_stream._native'] = None\n"
        "import numpy as np, expo_stream\n"
        "from expo_stream.kernels import resolve_backend\n"
        "assert resolve_backend() == 'numba', resolve_backend()\n"
        "d = np.array([1.0, 2.0], np.float32)\n"
        "print(expo_stream.extrapolate(d, d * 0, 0.5).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[1.5, 3.0]"


def test_side_files_come_from_dpo(tmp_path):
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path)
    (dpo_dir / "tokenizer.json").write_text('{"dpo": true}')
    (sft_dir / "tokenizer.json").write_text('{"sft": true}')
    (dpo_dir / "generation_config.json").write_text('{"do_sample": true}')
    expo_stream.merge(sft_dir, dpo_dir, tmp_path / "out", alpha=0.3)
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text()) == {"dpo": True}
    assert (tmp_path / "out" / "generation_config.json").exists()


def test_every_mismatch_is_listed_in_one_error(tmp_path):
    extra = {"model.norm.weight": (np.ones(3, np.float32), None),
             "lm_head.weight": (np.ones((24, 8), np.int32), None),
             "sft.only": (np.ones(2, np.float32), None)}
    sft_dir, dpo_dir, _, _ = tiny_pair(tmp_path, extra=extra)
    with pytest.raises(expo_stream.PlanError) as info:
        expo_stream.merge(sft_dir, dpo_dir, tmp_path / "out", alpha=0.3)
    message = str(info.value)
    assert "'sft.only'" in message and "'model.norm.weight': shape" in message
    assert "'lm_head.weight': dtypes I32 (SFT) and BF16 (DPO) are not mergeable" in message
    assert "\n" not in message


def test_unrelated_models_get_a_short_error_that_starts_with_the_config(tmp_path):
    small = dict(TINY)
    big = dict(TINY, hidden_size=16, intermediate_size=24, num_hidden_layers=6)
    sft, _, _, _ = tiny_pair(tmp_path / "a", config=small)
    _, dpo, _, _ = tiny_pair(tmp_path / "b", config=big)
    r = run("merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out", "--alpha", "0.3")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    message = r.output.split("cannot be merged: ", 1)[1]
    assert message.startswith("configs differ (hidden_size 8 vs 16, intermediate_size 12 vs 24, "
                              "num_hidden_layers 4 vs 6); ")
    assert "tensor(s) only in DPO" in message and "differ in shape or dtype" in message
    assert "more" in message and len(r.output) < 1200


def test_the_same_files_as_sft_and_dpo_are_refused(tmp_path):
    _, dpo, _, _ = tiny_pair(tmp_path)
    r = run("merge", "--sft", dpo, "--dpo", dpo / ".." / "dpo", "--out", tmp_path / "out",
            "--alpha", "0.3")
    assert r.exit_code == 1 and "are the same files" in r.output


def test_identical_copies_as_sft_and_dpo_are_refused(tmp_path):
    import shutil

    _, dpo, _, _ = tiny_pair(tmp_path)
    shutil.copytree(dpo, tmp_path / "copy")
    r = run("merge", "--sft", tmp_path / "copy", "--dpo", dpo, "--out", tmp_path / "out",
            "--alpha", "0.3")
    assert r.exit_code == 1 and "hold identical tensors" in r.output
    assert not (tmp_path / "out").exists()


def test_more_layer_groups_than_layers_is_a_warning_in_the_merge_and_the_dry_run(tmp_path):
    config = dict(TINY, num_hidden_layers=2)
    sft, dpo, _, _ = tiny_pair(tmp_path, config=config)
    warning = ("warning: --layer-alphas 5,10,15: 'model.layers' has 2 layer(s) for 3 groups; "
               "α 5 apply to none of them")
    r = run("merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out",
            "--layer-alphas", "5,10,15", "--dry-run")
    assert r.exit_code == 0 and warning in r.output.splitlines()
    r = run("merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out",
            "--layer-alphas", "5,10,15", "--quiet")
    assert r.exit_code == 0 and warning in r.output.splitlines()
    r = run("merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out2",
            "--layer-alphas", "5,10", "--quiet")
    assert r.exit_code == 0 and "warning" not in r.output


def test_a_merge_ends_with_one_summary_line_and_a_short_repr(tmp_path):
    import re

    sft, dpo, _, _ = tiny_pair(tmp_path)
    r = run("merge", "--sft", sft, "--dpo", dpo, "--out", tmp_path / "out", "--alpha", "0.3,0.5",
            "--max-shard-size", "1KB", "--quiet", "--backend", "numpy")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert re.fullmatch(r"merged 39 tensors into \d+ shard\(s\) x 2 output\(s\), 0\.00 GB, "
                        r"in \d+\.\d s \(\d+ MB/s written\) with numpy", lines[0]), lines[0]
    assert lines[1:] == [f"wrote {tmp_path / 'out' / 'alpha-0.3'}",
                         f"wrote {tmp_path / 'out' / 'alpha-0.5'}"]
    result = expo_stream.merge(sft, dpo, tmp_path / "again", alpha=0.3)
    assert len(repr(result)) < 300 and "again" in repr(result)


@pytest.mark.parametrize("where, overwrite, message", [
    ("existing", False, "already exists (use --overwrite"),
    ("inside", False, "output would be inside the input"),
    ("parent", True, "holding the input"),
    ("missing-parent", False, "parent directory does not exist"),
])
def test_dry_run_refuses_what_the_merge_would_refuse(tmp_path, where, overwrite, message):
    sft, dpo, _, _ = tiny_pair(tmp_path)
    (tmp_path / "existing").mkdir()
    out = {"existing": tmp_path / "existing", "inside": dpo / "out", "parent": tmp_path,
           "missing-parent": tmp_path / "no" / "out"}[where]
    args = ["merge", "--sft", sft, "--dpo", dpo, "--out", out, "--alpha", "0.3"]
    for extra in (["--dry-run"], []):
        r = run(*args, *extra, *(["--overwrite"] if overwrite else []))
        assert r.exit_code == 2 and message in r.output, (extra, r.output)


def test_recipe_paths_are_relative_to_the_recipe_and_errors_name_it(tmp_path, monkeypatch):
    sft, dpo, _, _ = tiny_pair(tmp_path / "models")
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("sft: ../models/sft\ndpo: ../models/dpo\nalpha: 0.3\n"
                      "sft_name: org/tiny-sft\n")
    monkeypatch.chdir(tmp_path / "models")  # another working directory
    r = run("merge", "--recipe", recipe, "--out", tmp_path / "out", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "expo_recipe.json").read_text())["sft"] == str(sft)
    assert "base_model:\n- org/tiny-sft\n" in (tmp_path / "out" / "README.md").read_text()
    recipe.write_text("sft: ../models/nope\ndpo: ../models/dpo\nalpha: 0.3\n")
    r = run("merge", "--recipe", recipe, "--out", tmp_path / "out2", "--quiet")
    assert r.exit_code == 2 and r.output.startswith(f"error: {recipe}: ")
    assert "relative paths are read from the recipe's directory" in r.output


def test_the_example_recipe_is_a_valid_recipe(tmp_path):
    from pathlib import Path

    from expo_stream.plan.options import load_recipe

    example = Path(__file__).resolve().parents[1] / "docs" / "recipe.example.yaml"
    options = load_recipe(example, tmp_path / "sft", tmp_path / "dpo")
    (schedule,) = options.schedules
    assert schedule.layer_alphas == (5.0, 10.0, 15.0) and schedule.non_layer_alpha == 5.0
    assert options.dtype == "BF16" and options.sft_name == "HuggingFaceTB/SmolLM2-135M"
