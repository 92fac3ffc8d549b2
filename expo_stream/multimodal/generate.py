"""``mm generate``: answer a question about an image with a trained (or exported) model.

The model is loaded by :func:`.model.load_trained`, so the projector is the trained one (the seed
built a fresh random projector at every inference). Prompts go through the same template as in
training, and only the new tokens are decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FormatError, UsageError
from .ddpo import encode_prompt
from .model import load_trained


def load_requests(path: str | Path) -> list[dict]:
    """A batch file: JSONL of ``{"image": PATH, "prompt": TEXT}`` (image relative to the file)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    out = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise FormatError(f"{path}: line {n + 1} is not JSON") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str)
                                                for k in ("image", "prompt")):
            raise FormatError(f"{path}: line {n + 1} needs string `image` and `prompt`")
        image = Path(row["image"])
        out.append({**row, "image": str(image if image.is_absolute() else path.parent / image)})
    return out


def generate(model: str | Path, requests: list[dict], *, max_new_tokens: int = 64,
             greedy: bool = True, seed: int = 42) -> list[dict]:
    """Answer each ``{"image", "prompt"}``; returns the requests with ``output`` added."""
    import torch
    from PIL import Image, UnidentifiedImageError

    net, processor = load_trained(model)
    net.eval()
    torch.manual_seed(seed)
    results = []
    for req in requests:
        try:
            image = Image.open(req["image"])
            image.load()
        except (OSError, UnidentifiedImageError) as exc:
            raise UsageError(f"{req['image']}: cannot read the image ({exc})") from None
        ids, pixels = encode_prompt(processor, net.config, req["prompt"], image,
                                    max_prompt_length=10**6, sample_id=req["image"])
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            out = net.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                               pixel_values=pixels[None], max_new_tokens=max_new_tokens,
                               do_sample=not greedy,
                               pad_token_id=processor.tokenizer.pad_token_id)
        text = processor.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        results.append({**req, "output": text.strip()})
    return results
