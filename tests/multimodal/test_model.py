"""Building the LLaVA model from pretrained parts (a CLIP vision tower and a causal LM)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from click.testing import CliRunner  # noqa: E402

from expo_stream.cli import main  # noqa: E402
from expo_stream.errors import UsageError  # noqa: E402
from expo_stream.multimodal.model import num_image_tokens, start_model  # noqa: E402
from expo_stream.multimodal.train import autocast  # noqa: E402

from ..generation.tiny_lm import tiny_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(1)
    # CLIP ViT-B/16's shape in miniature: hidden width != projection_dim
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48,
                                              num_hidden_layers=3, num_attention_heads=4,
                                              image_size=32, patch_size=16, projection_dim=12))
    vision.save_pretrained(root / "clip")
    return root / "clip", tiny_model_dir(root / "llm", seed=2)


def test_compose_copies_both_towers_exactly(parts):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    clip, llm = parts
    net, processor = start_model(vision=clip, llm=llm)
    vocab = len(AutoTokenizer.from_pretrained(llm))
    assert len(processor.tokenizer) == vocab + 1  # <image> added
    assert net.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert net.model.multi_modal_projector.linear_1.in_features == 24
    state = net.state_dict()
    for name, value in load_file(clip / "model.safetensors").items():
        assert torch.equal(state["model.vision_tower." + name], value), name
    for name, value in load_file(llm / "model.safetensors").items():
        ours = state["lm_head.weight" if name == "lm_head.weight"
                     else name.replace("model.", "model.language_model.", 1)]
        assert torch.equal(ours[:value.shape[0]], value), name
    assert num_image_tokens(net.config) == 4  # (32 / 16)^2 patches, CLS dropped


def test_train_from_parts_then_export(parts, tmp_path):
    clip, llm = parts
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--vision", str(clip), "--llm", str(llm),
                                  "--data", str(_toy_parquet(tmp_path)), "--steps", "2",
                                  "--batch-size", "2", "--lr", "1e-3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.6931471805599453, abs=0)
    r = CliRunner().invoke(main, ["mm", "export", str(out), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output


def _toy_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from expo_stream.multimodal.tiny import toy_rows

    pq.write_table(pa.Table.from_pylist(toy_rows(4)), tmp_path / "toy.parquet")
    return tmp_path / "toy.parquet"


def test_one_source_of_the_start_model(parts):
    with pytest.raises(UsageError, match="exactly one"):
        start_model(tiny=True, model="x")
    with pytest.raises(UsageError, match="go together"):
        start_model(vision=parts[0])


def test_autocast_names_its_device():
    """The seed called autocast without a device type."""
    ctx = autocast("bf16", torch.device("cpu"))
    assert ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16
    assert not hasattr(autocast("fp32", torch.device("cpu")), "fast_dtype")


def test_train_from_an_existing_llava_dir(tmp_path):
    net, processor = start_model(tiny=True)
    net.to(torch.bfloat16).save_pretrained(tmp_path / "llava")  # as checkpoints often ship
    processor.save_pretrained(tmp_path / "llava")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--model", str(tmp_path / "llava"), "--data",
                                  str(_toy_parquet(tmp_path)), "--steps", "1", "--batch-size", "2",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    run = json.loads((out / "expo_mm_run.json").read_text())
    assert run["start"] == str((tmp_path / "llava").resolve()) and not (out / "start").exists()
    assert run["config"]["lr"] == 2e-6 and run["finished_step"] == 1  # the seed's default lr
    # the export keeps the small DDPO update: fp32, whatever the start model's dtype
    r = CliRunner().invoke(main, ["mm", "export", str(out), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    from safetensors import safe_open

    with safe_open(tmp_path / "exp" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    r = CliRunner().invoke(main, ["merge", "--sft", str(tmp_path / "llava"), "--dpo",
                                  str(tmp_path / "exp"), "--out", str(tmp_path / "expo"),
                                  "--alpha", "0.3", "--dtype", "bf16", "--quiet"])
    assert r.exit_code == 0, r.output  # bf16 start with fp32 trained model, rounded once
