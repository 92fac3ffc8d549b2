"""Synthetic SFT/DPO checkpoint pairs with the exact tensor names and shapes of real models.

    python bench/checkpoints.py mistral-7b /tmp/pairs/mistral-7b

BF16; DPO = SFT + small noise; SFT in 5 GB shards and DPO in 2 GB shards (transformers'
naming and index), so the merge must pair tensors by name across different layouts. Data comes
from one 64 MiB random block reused across tensors, so generation runs at disk speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from expo_stream.demo import llama_shapes  # noqa: E402
from expo_stream.format.checkpoint import group_shards, shard_name  # noqa: E402
from expo_stream.format.safetensors import encode_header  # noqa: E402

COMMON = {"max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
          "eos_token_id": 2, "hidden_act": "silu"}
MODELS = {
    "llama-0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, num_key_value_heads=8, vocab_size=32000),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    "llama-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                     num_attention_heads=24, num_key_value_heads=8, vocab_size=32000),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                       model_type="mistral", architectures=["MistralForCausalLM"]),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      rope_theta=500000.0),
}
SFT_SHARD, DPO_SHARD = 5_000_000_000, 2_000_000_000
BLOCK = 32 * 2**20  # elements


def config_of(name: str) -> dict:
    config = dict(COMMON, model_type="llama", architectures=["LlamaForCausalLM"])
    config.update(MODELS[name])
    return config


def parameter_count(name: str) -> int:
    return sum(int(np.prod(s)) for s in llama_shapes(config_of(name)).values())


def _write_checkpoint(directory: Path, shapes: dict, block: np.ndarray, shard_bytes: int,
                      config: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    items = list(shapes.items())
    groups = [[items[j] for j in group]
              for group in group_shards([int(np.prod(shape)) * 2 for _, shape in items], shard_bytes)]
    weight_map, cursor = {}, 0
    raw = block.view(np.uint8)
    for i, group in enumerate(groups):
        filename = shard_name(i, len(groups))
        header = encode_header((name, "BF16", shape) for name, shape in group)
        weight_map.update({name: filename for name, _ in group})
        fd = os.open(directory / filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, header)
            remaining = sum(int(np.prod(shape)) * 2 for _, shape in group)
            while remaining:  # the block, reused from where the last tensor stopped
                start = cursor % raw.nbytes
                piece = raw[start:start + min(remaining, raw.nbytes - start)]
                os.write(fd, piece)
                remaining -= piece.nbytes
                cursor += piece.nbytes
        finally:
            os.close(fd)
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (directory / "config.json").write_text(json.dumps(config, indent=1))


def make_pair(name: str, root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/sft`` and ``root/dpo`` for model ``name``; returns both paths."""
    config = config_of(name)
    shapes = llama_shapes(config)
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(BLOCK, dtype=np.float32) * 0.02
    sft = base.astype(ml_dtypes.bfloat16)
    dpo = (base + rng.standard_normal(BLOCK, dtype=np.float32) * 2e-4).astype(ml_dtypes.bfloat16)
    del base
    _write_checkpoint(root / "sft", shapes, sft, SFT_SHARD, config)
    _write_checkpoint(root / "dpo", shapes, dpo, DPO_SHARD, config)
    return root / "sft", root / "dpo"


def main() -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic SFT/DPO pair.")
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("root", type=Path)
    args = ap.parse_args()
    sft, dpo = make_pair(args.model, args.root)
    print(f"{args.model}: {parameter_count(args.model):,} parameters -> {sft}, {dpo}")


if __name__ == "__main__":
    main()
