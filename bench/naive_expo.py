"""The way the original ExPO script merges, for comparison: load both models whole, loop, save.

    python bench/naive_expo.py SFT DPO OUT ALPHA

Both models are loaded with transformers in bf16, every parameter is updated in place with
``p + alpha * (p - p_sft)`` computed in bf16, and ``save_pretrained`` writes 5 GB shards.
"""

import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    sft_path, dpo_path, out, alpha = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    dpo = AutoModelForCausalLM.from_pretrained(dpo_path, dtype=torch.bfloat16)
    sft = AutoModelForCausalLM.from_pretrained(sft_path, dtype=torch.bfloat16)
    sft_params = dict(sft.named_parameters())
    with torch.no_grad():
        for name, p in dpo.named_parameters():
            p.data = p.data + alpha * (p.data - sft_params[name].data)
    del sft, sft_params
    dpo.save_pretrained(out, max_shard_size="5GB")


if __name__ == "__main__":
    main()
