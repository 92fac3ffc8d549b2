"""ExPO reproduced on SmolLM2-135M-Instruct with a verifiable reward (issue 15; bench/REPRO.md).

Modules: ``constraints`` (IFEval-style checkers and the reward), ``data`` (prompts, split),
``sft`` (the GGUF chat model re-saved as safetensors), ``dpo`` (on-policy pairs, DPO training).
"""
