"""The LLaVA-style model: CLIP vision tower, trained projector, language model; LoRA; loading.

A model comes from one of three places:

- ``tiny``: random tiny configs (:mod:`.tiny`), for tests and the demo;
- parts: a CLIP vision checkpoint (``CLIPVisionModel`` or a whole ``CLIPModel``) and a causal LM
  with its tokenizer, composed into ``LlavaForConditionalGeneration``. The projector is sized from
  the vision tower's hidden size (the features LLaVA feeds it), never from CLIP's
  ``projection_dim``; it starts random and is trained;
- an existing LLaVA checkpoint directory.

Training adds LoRA adapters to the language model's attention only (a bare ``q_proj`` target would
also hit the vision tower) and trains the projector in full (``modules_to_save``).

A training run directory (``mm train-ddpo --out``) holds ``expo_mm_run.json``, the start model (or
a path to it), ``adapter/`` and ``projector.safetensors``; :func:`load_trained` turns either a run
directory or an exported model directory into a model with the trained projector.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import FormatError, UsageError

log = logging.getLogger(__name__)

RUN_FILE = "expo_mm_run.json"
ADAPTER_DIR = "adapter"
PROJECTOR_FILE = "projector.safetensors"
START_DIR = "start"
LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
PROJECTOR = "multi_modal_projector"


def num_image_tokens(config) -> int:
    """Image tokens per image: one per patch, plus CLS unless the ``default`` strategy drops it."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches if config.vision_feature_select_strategy == "default" else patches + 1


def make_processor(tokenizer, image_processor, config):
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          num_additional_image_tokens=1, chat_template=tokenizer.chat_template)


def start_model(*, tiny: bool = False, vision: str | Path | None = None,
                llm: str | Path | None = None, model: str | Path | None = None, seed: int = 0):
    """The model DDPO starts from, as ``(model, processor)``, float32.

    Raises:
        UsageError: not exactly one of ``tiny``, ``vision`` + ``llm``, ``model``.
    """
    import torch

    if sum([bool(tiny), vision is not None or llm is not None, model is not None]) != 1:
        raise UsageError("give exactly one of --tiny, --vision with --llm, or --model")
    if model is not None:
        return load_model_dir(model)
    torch.manual_seed(seed)
    if tiny:
        from transformers import LlavaForConditionalGeneration

        from .tiny import tiny_config, tiny_image_processor, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        config = tiny_config(tokenizer)
        net = LlavaForConditionalGeneration(config)
        return net.float(), make_processor(tokenizer, tiny_image_processor(), config)
    if vision is None or llm is None:
        raise UsageError("--vision and --llm go together")
    return _compose(Path(vision), Path(llm))


def _compose(vision_path: Path, llm_path: Path):
    import torch
    from transformers import (AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer,
                              CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration)

    for path in (vision_path, llm_path):
        if not (path / "config.json").is_file():
            raise UsageError(f"{path}: not a model directory (no config.json)")
    vision = CLIPVisionModel.from_pretrained(vision_path, dtype=torch.float32)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.float32)
    for path, part in ((vision_path, vision), (llm_path, llm)):
        _dense_config(path, part)
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["<image>"], special_tokens=True)
        llm.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        image_processor = AutoImageProcessor.from_pretrained(vision_path)
    except (OSError, ValueError):
        from transformers.models.clip import CLIPImageProcessorPil

        size = vision.config.image_size
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                                crop_size={"height": size, "width": size})
    config = LlavaConfig(vision_config=vision.config, text_config=llm.config,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         pad_token_id=tokenizer.pad_token_id)
    net = LlavaForConditionalGeneration(config).float()
    net.model.vision_tower.load_state_dict(vision.state_dict())
    net.model.language_model.load_state_dict(llm.get_decoder().state_dict())
    net.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    return net, make_processor(tokenizer, image_processor, config)


def load_processor(path: str | Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def _dense_config(path: Path, part) -> None:
    """Refuse packed quantized weights; drop a stale ``quantization_config`` from dense ones.

    A model re-saved from GGUF keeps ``quantization_config: {quant_method: gguf}`` although its
    weights are plain floats; carried into the LLaVA config it would make the composed model
    "quantized" and unsaveable.
    """
    packed = sorted({str(p.dtype) for p in part.parameters() if not p.dtype.is_floating_point})
    if packed:
        raise UsageError(f"{path}: quantized weights ({', '.join(packed)}); compose from "
                         "full-precision checkpoints")
    if getattr(part.config, "quantization_config", None) is not None:
        del part.config.quantization_config


def load_model_dir(path: str | Path):
    """An exported or downloaded LLaVA model directory as ``(model, processor)``."""
    import torch
    from transformers import LlavaForConditionalGeneration

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UsageError(f"{path}: not a model directory (no config.json)")
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "llava":
        raise FormatError(f"{path}/config.json: model_type is {config.get('model_type')!r}, "
                          "expected 'llava'")
    net = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    return net, load_processor(path)


def add_adapters(net, *, rank: int = 8, alpha: int = 16, dropout: float = 0.05):
    """LoRA on the language model's attention; the projector trained in full."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET,
                        modules_to_save=[PROJECTOR], bias="none")
    return get_peft_model(net, config)


def projector_of(net):
    """The projector module a forward pass uses (the trained copy inside a PEFT model)."""
    root = net.base_model.model if hasattr(net, "peft_config") else net
    module = root.get_submodule(f"model.{PROJECTOR}")
    if hasattr(module, "modules_to_save"):
        return module.modules_to_save[module.active_adapters[0]]
    return module


def projector_state(net) -> dict:
    """The projector's tensors, cloned, keyed as in ``projector.safetensors``."""
    return {k: v.detach().clone().contiguous() for k, v in projector_of(net).state_dict().items()}


def read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a readable training run ({exc})") from None


def start_of(run_dir: Path) -> Path:
    """The start model directory a run trained from."""
    run = read_run(run_dir)
    start = Path(run["start"])
    return start if start.is_absolute() else Path(run_dir) / start


def load_trained(path: str | Path, adapter: str | Path | None = None):
    """A trained model as ``(model, processor)``: a run directory or an exported model directory.

    For a run directory the adapters are merged into the start model and the projector is checked
    bit for bit against ``projector.safetensors`` (what inference uses is what training saved).
    """
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / RUN_FILE).is_file():
        return load_model_dir(path)
    adapter = Path(adapter) if adapter else path / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise FormatError(f"{adapter}: no adapters (did training finish? a checkpoint's are in "
                          "RUN/checkpoints/step-N)")
    net, processor = load_model_dir(start_of(path))
    merged = PeftModel.from_pretrained(net, adapter).merge_and_unload()
    saved = load_file(adapter.parent / PROJECTOR_FILE)
    got = projector_state(merged)
    if saved.keys() != got.keys() or any(not torch.equal(saved[k], got[k]) for k in saved):
        raise FormatError(f"{adapter}: the projector in the adapters differs from "
                          f"{adapter.parent / PROJECTOR_FILE}")
    return merged, processor
