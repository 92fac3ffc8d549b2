"""``mm train-ddpo`` end to end on the tiny LLaVA: log 2 at step 0, learning, the projector's
round trip, OOM recovery, precision, accumulation, resume; then ``mm export`` and the merge."""

from __future__ import annotations

import json
import math
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("datasets")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from expo_stream.cli import main  # noqa: E402
from expo_stream.multimodal import ddpo  # noqa: E402
from expo_stream.multimodal.data import build  # noqa: E402
from expo_stream.multimodal.model import load_trained, projector_state, start_model  # noqa: E402
from expo_stream.multimodal.tiny import square_png, toy_rows  # noqa: E402
from expo_stream.multimodal.train import Trainer, TrainConfig, train_ddpo  # noqa: E402


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The issue's command: ``mm train-ddpo --tiny --steps 10 --out DIR``."""
    out = tmp_path_factory.mktemp("mm") / "run"
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--tiny", "--steps", "10", "--out", str(out)])
    assert r.exit_code == 0, r.output
    # A progress bar with the loss while it trains (stderr is mixed into r.output here).
    assert "train-ddpo: 100%" in r.output and "10/10" in r.output and "loss=" in r.output
    return out


@pytest.fixture(scope="module")
def rows():
    net, processor = start_model(tiny=True)
    return build(toy_rows(32), processor.tokenizer)[0]["train"]


def trainer(tmp_path, rows, **config):
    net, processor = start_model(tiny=True)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "expo_mm_run.json").write_text(json.dumps({"start": "start", "data": None,
                                                           "config": {}}))
    cfg = TrainConfig(**{"lr": 1e-3, "warmup_ratio": 0.0, **config})
    return Trainer(net, processor, rows, tmp_path, cfg)


def test_cli_run_leaves_adapters_projector_and_metrics(run):
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert set(load_file(run / "projector.safetensors")) == {
        "linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    assert (run / "metrics.png").stat().st_size > 0
    m = metrics(run)
    assert [r["step"] for r in m] == list(range(1, 11))
    assert m[0]["loss"] == math.log(2) and m[0]["rewards/margin"] == 0.0
    # per-epoch checkpoints: 32 toy pairs / global batch 8 = 4 steps an epoch
    for step in (4, 8):
        ckpt = run / "checkpoints" / f"step-{step}"
        assert {p.name for p in ckpt.iterdir()} >= {"adapter", "projector.safetensors",
                                                    "processor", "optimizer.pt",
                                                    "trainer_state.json", "config.json",
                                                    "train_config.json"}
    assert not list(run.rglob("*.partial"))


def test_ten_steps_learn_the_toy_preference(run):
    m = metrics(run)
    assert m[0]["rewards/accuracy"] == 0.0  # ties at step 0 count as not won
    assert sum(r["rewards/accuracy"] for r in m[-3:]) / 3 >= 0.9
    assert min(r["rewards/margin"] for r in m[-3:]) > 0
    assert m[-1]["rewards/margin"] > m[1]["rewards/margin"]
    assert m[-1]["loss"] < math.log(2)


def test_inference_loads_the_saved_projector_bit_for_bit(run, tmp_path):
    saved = load_file(run / "projector.safetensors")
    start = load_file(run / "start" / "model.safetensors")
    assert not torch.equal(saved["linear_1.weight"],
                           start["multi_modal_projector.linear_1.weight"])  # it was trained
    net, _ = load_trained(run)
    got = projector_state(net)
    assert all(torch.equal(saved[k], got[k]) for k in saved)
    r = CliRunner().invoke(main, ["mm", "export", str(run), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    exported = load_file(tmp_path / "exp" / "model.safetensors")
    assert all(torch.equal(saved[k], exported[f"multi_modal_projector.{k}"]) for k in saved)
    ckpt = run / "checkpoints" / "step-4"
    r = CliRunner().invoke(main, ["mm", "export", str(run), "--checkpoint", str(ckpt), "--out",
                                  str(tmp_path / "exp4")])
    assert r.exit_code == 0, r.output
    at4, exported4 = load_file(ckpt / "projector.safetensors"), load_file(tmp_path / "exp4" / "model.safetensors")
    assert not torch.equal(at4["linear_1.weight"], saved["linear_1.weight"])
    assert all(torch.equal(at4[k], exported4[f"multi_modal_projector.{k}"]) for k in at4)


def test_the_reference_stays_the_start_model(rows, tmp_path):
    tr = trainer(tmp_path / "run", rows, max_steps=3)
    tr.run()
    batch = tr.batch([rows[0], rows[1]])
    fresh, _ = start_model(tiny=True)
    with torch.no_grad(), tr.net.disable_adapter():
        reference = ddpo.scores(tr.net.eval(), batch)
    with torch.no_grad():
        start = ddpo.scores(fresh.eval(), batch)
        policy = ddpo.scores(tr.net, batch)
    torch.testing.assert_close(reference, start, rtol=0, atol=1e-9)
    assert not torch.allclose(policy, start)


def adapter_weights(tr):
    return {k: v.detach().clone() for k, v in tr.net.named_parameters() if v.requires_grad}


def test_accumulation_matches_one_big_batch(rows, tmp_path):
    """8 pairs as 4 micro-batches of 2 give the gradient of one batch of 8 (loss / accumulation)."""
    grads = []
    for micro in (2, 8):
        tr = trainer(tmp_path / str(micro), rows, micro_batch_size=micro, lora_dropout=0.0)
        with torch.no_grad():  # a policy away from the reference, so the gradient is not trivial
            for name, p in tr.net.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.linspace(-0.05, 0.05, p.numel()).reshape(p.shape))
        tr._accumulate([rows[i] for i in range(8)])
        grads.append({k: p.grad.clone() for k, p in tr.net.named_parameters() if p.requires_grad})
    small, big = grads
    assert any(g.abs().max() > 0 for g in big.values())
    for k in big:  # float32 sums in another order: equal to ~1e-5 of each tensor's scale
        scale = big[k].abs().max().item()
        torch.testing.assert_close(small[k], big[k], rtol=1e-4, atol=1e-5 * scale)


def test_out_of_memory_halves_the_micro_batch(rows, tmp_path, monkeypatch):
    real = ddpo.scores

    def picky(net, batch, reduction="mean"):
        if batch["input_ids"].shape[0] > 2:  # more than one pair
            raise torch.OutOfMemoryError("injected")
        return real(net, batch, reduction)

    monkeypatch.setattr(ddpo, "scores", picky)
    a = trainer(tmp_path / "a", rows, max_steps=2, micro_batch_size=4, lora_dropout=0.0)
    a.run()
    assert [r["micro_batch"] for r in metrics(tmp_path / "a")] == [1, 1]
    monkeypatch.setattr(ddpo, "scores", real)
    b = trainer(tmp_path / "b", rows, max_steps=2, micro_batch_size=1, lora_dropout=0.0)
    b.run()
    wa, wb = adapter_weights(a), adapter_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # no gradient left over from a failed try


def test_out_of_memory_at_micro_batch_1_is_a_clear_error(tmp_path, monkeypatch):
    def never(*a, **k):
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(ddpo, "scores", never)
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--tiny", "--steps", "2", "--out",
                                  str(tmp_path / "r")])
    assert r.exit_code == 1
    assert r.output.strip() == ("error: out of memory at step 1 with micro-batch 1; shorten "
                                "--max-prompt-length/--max-response-length or use a smaller model")
    assert isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("precision, computed", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_precision_is_what_the_matmuls_run_in(rows, tmp_path, precision, computed):
    """Every Linear's output is in the chosen precision, so a bf16 run that silently ran in
    fp32 (autocast lost) fails here; trainable weights stay fp32 either way."""
    tr = trainer(tmp_path, rows, max_steps=2, precision=precision)
    assert tr.scaler is None  # bf16 needs no GradScaler
    seen = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
             for m in tr.net.modules() if isinstance(m, torch.nn.Linear)]
    last = tr.run()
    for h in hooks:
        h.remove()
    assert seen == {computed}
    assert math.isfinite(last["loss"])
    assert all(p.dtype == torch.float32 for p in tr.params)


def test_fp16_keeps_fp32_master_weights(rows, tmp_path):
    """The seed put a GradScaler on fp16 weights ("Attempting to unscale FP16 gradients")."""
    net, processor = start_model(tiny=True)
    (tmp_path / "expo_mm_run.json").write_text('{"start": "start", "data": null, "config": {}}')
    tr = Trainer(net.half(), processor, rows, tmp_path,
                 TrainConfig(lr=1e-3, max_steps=1, precision="fp16"))
    assert tr.scaler is not None
    assert all(p.dtype == torch.float32 for p in tr.params)
    base = [p for p in tr.net.parameters() if not p.requires_grad]
    assert base and all(p.dtype == torch.float16 for p in base)
    # a GradScaler step on fp16 trainable weights raises "Attempting to unscale FP16 gradients"
    assert math.isfinite(tr.run()["loss"])
    assert tr.scaler.get_scale() > 0


def test_resume_continues_bit_for_bit(rows, tmp_path):
    full = tmp_path / "full"
    train_ddpo(full, **_fresh(), dataset=rows, config=TrainConfig(lr=1e-3, max_steps=4,
                                                                 save_every=2))
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    # as if killed after the step-2 checkpoint
    shutil.rmtree(cut / "checkpoints" / "step-4")
    shutil.rmtree(cut / "adapter")
    (cut / "projector.safetensors").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # step 3 logged, not saved
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--out", str(cut), "--resume"])
    assert r.exit_code == 0, r.output
    assert metrics(cut) == metrics(full)
    for name in ("adapter/adapter_model.safetensors", "projector.safetensors"):
        a, b = load_file(full / name), load_file(cut / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def _fresh():
    net, processor = start_model(tiny=True)
    return {"net": net, "processor": processor, "data_source": {"tiny": 32}}


def test_export_then_merge_then_generate(run, tmp_path):
    exported = tmp_path / "exported"
    r = CliRunner().invoke(main, ["mm", "export", str(run), "--out", str(exported)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["merge", "--sft", str(run / "start"), "--dpo", str(exported),
                                  "--out", str(tmp_path / "expo"), "--layer-alphas", "0.5,1,2",
                                  "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "language_model.model.layers layers 0-0: alpha=0.5" in r.output
    assert "vision_tower.encoder.layers layers 1-1: alpha=2" in r.output
    r = CliRunner().invoke(main, ["merge", "--sft", str(run / "start"), "--dpo", str(exported),
                                  "--out", str(tmp_path / "expo"), "--alpha", "0.5", "--quiet"])
    assert r.exit_code == 0, r.output
    start = load_file(run / "start" / "model.safetensors")
    dpo = load_file(exported / "model.safetensors")
    merged = load_file(tmp_path / "expo" / "model.safetensors")
    for name in ("multi_modal_projector.linear_1.weight",
                 "language_model.model.layers.0.self_attn.q_proj.weight"):
        expect = (1.5 * dpo[name].double() - 0.5 * start[name].double()).float()
        assert not torch.equal(dpo[name], start[name])
        torch.testing.assert_close(merged[name], expect, rtol=0, atol=0)
    # frozen tensors are identical in start and trained model, so extrapolation keeps them
    frozen = "vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(merged[frozen], start[frozen])
    # README: a projector that started random gets α = 0 by a recipe rule -> the trained one
    (tmp_path / "recipe.yaml").write_text('layer_alphas: [0.5, 1, 2]\n'
                                          'rules:\n  - {match: "multi_modal_projector", alpha: 0}\n')
    r = CliRunner().invoke(main, ["merge", "--sft", str(run / "start"), "--dpo", str(exported),
                                  "--out", str(tmp_path / "expo-rule"), "--recipe",
                                  str(tmp_path / "recipe.yaml"), "--quiet"])
    assert r.exit_code == 0, r.output
    ruled = load_file(tmp_path / "expo-rule" / "model.safetensors")
    proj = "multi_modal_projector.linear_2.weight"
    assert torch.equal(ruled[proj], dpo[proj])
    q = "language_model.model.layers.2.self_attn.q_proj.weight"
    torch.testing.assert_close(ruled[q], (3 * dpo[q].double() - 2 * start[q].double()).float(),
                               rtol=0, atol=0)
    image = tmp_path / "red.png"
    image.write_bytes(square_png("red"))
    (tmp_path / "req.jsonl").write_text(json.dumps({"image": "red.png", "prompt": "Which color?"}))
    for model in (tmp_path / "expo", run):
        r = CliRunner().invoke(main, ["mm", "generate", "--model", str(model), "--requests",
                                      str(tmp_path / "req.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                                      "--max-new-tokens", "4"])
        assert r.exit_code == 0, r.output
        out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
        assert len(out) == 1 and out[0]["output"]
    r = CliRunner().invoke(main, ["mm", "generate", "--model", str(run), "--image", str(image),
                                  "--prompt", "Which color?", "--max-new-tokens", "3"])
    assert r.exit_code == 0 and r.output.strip(), r.output
    r = CliRunner().invoke(main, ["mm", "generate", "--model", str(run), "--image", str(image)])
    assert r.exit_code == 2 and "--requests" in r.output


def test_bad_requests_are_one_line_errors(run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("adapter"))
    r = CliRunner().invoke(main, ["mm", "export", str(unfinished), "--out", str(tmp_path / "e")])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert f"{unfinished / 'adapter'}: no adapters" in r.output
    assert not (tmp_path / "e").exists()
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--model", str(run / "start"), "--out",
                                  str(tmp_path / "r")])
    assert r.exit_code == 2 and "--data is required" in r.output
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--tiny", "--out", str(run), "--steps", "1"])
    assert r.exit_code == 2 and "exists and is not empty" in r.output
    assert (run / "adapter").is_dir()  # nothing lost


def test_eval_split_is_scored_at_epoch_ends(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(toy_rows(16)), tmp_path / "toy.parquet")
    r = CliRunner().invoke(main, ["mm", "preprocess", str(tmp_path / "toy.parquet"), "--out",
                                  str(tmp_path / "ds"), "--tokenizer", "tiny", "--test-size", "0.25"])
    assert r.exit_code == 0 and "(train 12, test 4)" in r.output, r.output
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--tiny", "--data", str(tmp_path / "ds"),
                                  "--batch-size", "4", "--steps", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    evals = [json.loads(x) for x in (out / "eval_metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 5]  # end of epoch 1, then where --steps stopped
    assert evals[-1]["rewards/margin"] > 0


def test_evaluate_before_training_is_log2(rows, tmp_path):
    tr = trainer(tmp_path, rows, max_steps=1)
    tr.eval_dataset = [rows[i] for i in range(5)]  # an odd count: a short last micro-batch
    m = tr.evaluate()
    assert m["step"] == 0 and m["loss"] == math.log(2) and m["rewards/accuracy"] == 0.0


def test_run_config_defaults_live_in_the_library(run):
    """--tiny's lr, LoRA α = 2 × rank and the CPU precision come from TrainConfig.for_run; the
    CLI offers every setting with the config's own limits and passes what it was given."""
    recorded = json.loads((run / "expo_mm_run.json").read_text())["config"]
    assert recorded["lr"] == 1e-3 and recorded["max_steps"] == 10
    assert recorded["lora_alpha"] == 2 * recorded["lora_rank"] and recorded["precision"] == "fp32"
    assert TrainConfig.for_run(lora_rank=4).lora_alpha == 8
    assert TrainConfig.for_run(lora_rank=4, lora_alpha=3).lora_alpha == 3
    assert TrainConfig.for_run(lr=None).lr == TrainConfig.lr == 2e-6
    from dataclasses import fields

    train_cmd = main.commands["mm"].commands["train-ddpo"]
    assert {f.name for f in fields(TrainConfig)} <= {p.name for p in train_cmd.params}
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--tiny", "--out", str(run.parent / "x"),
                                  "--lora-dropout", "1"])
    assert r.exit_code == 2 and "--lora-dropout" in r.output
