"""DDPO on a real language model: SmolLM2-135M-Instruct (tied embeddings, a GGUF-derived config,
a byte-level BPE with a chat template) composed with a tiny CLIP tower, then export, merge and
generate. The tiny model tests cover the arithmetic; this one covers a real tokenizer and config.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("datasets")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from expo_stream.cli import main  # noqa: E402
from expo_stream.multimodal.data import segments  # noqa: E402
from expo_stream.multimodal.tiny import square_png, toy_rows  # noqa: E402


def test_real_tokenizer_segments(smollm2):
    from transformers import AutoTokenizer

    chosen = "The image shows a square. The square is green on a plain background."
    rejected = "The image shows a square. The square is blue on a plain background."
    c, r = segments(AutoTokenizer.from_pretrained(smollm2), chosen, rejected)
    assert [chosen[a:b].strip() for a, b in c] == ["green"]
    assert [rejected[a:b].strip() for a, b in r] == ["blue"]


def test_ddpo_export_merge_generate_on_smollm2(smollm2, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=16,
                                     projection_dim=32)).save_pretrained(tmp_path / "clip")
    pq.write_table(pa.Table.from_pylist(toy_rows(4)), tmp_path / "toy.parquet")
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["mm", "train-ddpo", "--vision", str(tmp_path / "clip"), "--llm",
                                  str(smollm2), "--data", str(tmp_path / "toy.parquet"),
                                  "--steps", "2", "--batch-size", "2", "--max-response-length",
                                  "32", "--lr", "1e-4", "--out", str(run)])
    assert r.exit_code == 0, r.output
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["loss"] == pytest.approx(0.6931471805599453, abs=0)
    assert steps[1]["rewards/chosen"] != 0.0  # the first step moved the policy
    assert "quantization_config" not in json.loads((run / "start" / "config.json").read_text())
    r = CliRunner().invoke(main, ["mm", "export", str(run), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["merge", "--sft", str(run / "start"), "--dpo",
                                  str(tmp_path / "exp"), "--out", str(tmp_path / "expo"),
                                  "--alpha", "0.5", "--quiet"])
    assert r.exit_code == 0, r.output
    merged = load_file(tmp_path / "expo" / "model.safetensors")
    assert merged["multi_modal_projector.linear_1.weight"].shape == (576, 64)
    (tmp_path / "red.png").write_bytes(square_png("red"))
    r = CliRunner().invoke(main, ["mm", "generate", "--model", str(tmp_path / "expo"), "--image",
                                  str(tmp_path / "red.png"), "--prompt", "What color is it?",
                                  "--max-new-tokens", "8"])
    assert r.exit_code == 0 and r.output.strip(), r.output
    assert "<|im_start|>" not in r.output and "<image>" not in r.output
