"""Tiny, offline stand-ins for tests and the demo: a tokenizer, model configs and toy data.

Everything is built in-process and deterministically: a byte-level BPE trained on a fixed corpus,
a CLIP vision tower and a Llama language model a few thousand parameters each, and an RLHF-V-shaped
toy preference that a model can learn in a few steps: each image is a square of one colour, the
chosen answer names that colour and the rejected answer another one.
"""

from __future__ import annotations

import io
import json
import random

IMAGE_SIZE = 32
PATCH_SIZE = 8
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220),
          "yellow": (230, 220, 30)}
QUESTIONS = ("What color is the square?", "Describe the image.", "Which color do you see?")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
_CORPUS = [
    "USER: ASSISTANT: The image shows a square. The square is {c}. It is a {c} square on a plain "
    "background. I see the color {c}. There is one {c} shape, nothing else.".format(c=c)
    for c in COLORS
] + list(QUESTIONS) + ["a the is of and to in it on with as for that this was are be by at"]


def tiny_tokenizer():
    """A byte-level BPE (any text encodes) with ``<image>`` and a USER/ASSISTANT chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_image_processor():
    from transformers.models.clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                 crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def tiny_config(tokenizer):
    """LLaVA config: CLIP tower 32-d (projection_dim 16, unused by LLaVA), Llama 48-d, 3 layers.

    The vision width (32), its projection_dim (16) and the LLM width (48) all differ, so a
    projector sized from the wrong one fails loudly (the seed fed 512-d features to a 768-d one).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                              projection_dim=16)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_select_strategy="default", vision_feature_layer=-2,
                       pad_token_id=tokenizer.pad_token_id)


def square_png(color: str, size: int = IMAGE_SIZE) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLORS[color]).save(buf, format="PNG")
    return buf.getvalue()


def toy_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """``n`` rows in the published RLHF-V layout (``text`` is a JSON string, ``image`` PNG bytes)."""
    rng = random.Random(seed)
    names = sorted(COLORS)
    rows = []
    for idx in range(n):
        color = names[idx % len(names)]
        wrong = rng.choice([c for c in names if c != color])
        answer = "The image shows a square. The square is {} on a plain background."
        text = {"question": rng.choice(QUESTIONS), "chosen": answer.format(color),
                "rejected": answer.format(wrong)}
        rows.append({"text": json.dumps(text), "image": {"bytes": square_png(color), "path": None},
                     "idx": idx, "ds_name": "toy-squares", "origin_dataset": "expo-stream",
                     "origin_split": "train"})
    return rows
