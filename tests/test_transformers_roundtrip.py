"""Round trip through transformers: tiny random Llama checkpoints in, a loadable model out."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from expo_stream.cli import main  # noqa: E402

from .kernels.oracle import oracle  # noqa: E402


def _bits(t: "torch.Tensor") -> np.ndarray:
    return t.detach().contiguous().view(torch.int16).numpy().view(np.uint16).reshape(-1)


def test_transformers_saves_merges_and_loads(tmp_path):
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=96, max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    sft = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    sft.save_pretrained(tmp_path / "sft")
    dpo = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    dpo.load_state_dict(sft.state_dict())
    with torch.no_grad():
        for p in dpo.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    dpo.save_pretrained(tmp_path / "dpo", max_shard_size="20KB")
    assert (tmp_path / "dpo" / "model.safetensors.index.json").exists()

    r = CliRunner().invoke(main, ["merge", "--sft", str(tmp_path / "sft"), "--dpo",
                                  str(tmp_path / "dpo"), "--out", str(tmp_path / "out"),
                                  "--layer-alphas", "0.3,0.5,2.5", "--quiet"])
    assert r.exit_code == 0, r.output

    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.dtype == torch.bfloat16
    groups = {0: 0.3, 1: 0.5, 2: 2.5}
    sft_state, dpo_state = sft.state_dict(), dpo.state_dict()
    import ml_dtypes

    for name, value in merged.state_dict().items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        alpha = groups[layer] if layer is not None else 0.3
        d = _bits(dpo_state[name]).view(ml_dtypes.bfloat16)
        s = _bits(sft_state[name]).view(ml_dtypes.bfloat16)
        assert np.array_equal(_bits(value), oracle(d, s, alpha, "BF16")), name

    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        logits = merged(ids).logits
    assert logits.shape == (1, 4, 96) and torch.isfinite(logits).all()


def test_pytorch_bin_checkpoints_are_read_safely(tmp_path, monkeypatch):
    """A .bin SFT (torch.save of a state dict) merges like its safetensors twin."""
    from .helpers import load_all, tiny_pair

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sft, dpo, sft_arrays, _ = tiny_pair(tmp_path)
    bin_dir = tmp_path / "sft-bin"
    bin_dir.mkdir()
    state = {k: torch.from_numpy(v.view(np.int16).copy()).view(torch.bfloat16)
             for k, v in sft_arrays.items()}
    torch.save(state, bin_dir / "pytorch_model.bin")
    for args, out in (([str(bin_dir)], "from-bin"), ([str(sft)], "from-st")):
        r = CliRunner().invoke(main, ["merge", "--sft", *args, "--dpo", str(dpo), "--out",
                                      str(tmp_path / out), "--alpha", "0.3", "--quiet"])
        assert r.exit_code == 0, r.output
    a = {k: v.tobytes() for k, v in load_all(tmp_path / "from-bin").items()}
    assert a == {k: v.tobytes() for k, v in load_all(tmp_path / "from-st").items()}
    # A pickle that is not plain tensors is refused, not executed.
    (bin_dir / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")
    import shutil

    shutil.rmtree(tmp_path / "cache")
    r = CliRunner().invoke(main, ["merge", "--sft", str(bin_dir), "--dpo", str(dpo), "--out",
                                  str(tmp_path / "evil"), "--alpha", "0.3"])
    assert r.exit_code == 1 and "weights_only" in r.output
