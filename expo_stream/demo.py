"""A small SFT/DPO checkpoint pair with a real Llama layout, made from a seed (no download).

The two checkpoints are sharded differently (SFT in one file, DPO in several) so that pairing by
name is exercised, and DPO = SFT + a small update, as after preference training.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np

from .format.writer import save_checkpoint

DEMO_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 176, "num_hidden_layers": 6, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}


def llama_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Llama-family checkpoint (as transformers saves it)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def make_pair(root: Path, config: dict = DEMO_CONFIG, seed: int = 0,
              sft_dtype=ml_dtypes.bfloat16, dpo_dtype=ml_dtypes.bfloat16,
              dpo_shard_bytes: int = 200_000) -> tuple[Path, Path]:
    """Write ``root/sft`` and ``root/dpo``; returns their paths."""
    rng = np.random.default_rng(seed)
    sft, dpo = {}, {}
    for name, shape in llama_shapes(config).items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            base = np.ones(shape, np.float32)
        else:
            base = rng.standard_normal(shape, dtype=np.float32) * 0.02
        sft[name] = base.astype(sft_dtype)
        dpo[name] = (base + rng.standard_normal(shape, dtype=np.float32) * 0.002).astype(dpo_dtype)
    root = Path(root)
    save_checkpoint(root / "sft", sft, None, config)
    save_checkpoint(root / "dpo", dpo, dpo_shard_bytes, config)
    return root / "sft", root / "dpo"
