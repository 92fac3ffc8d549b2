"""Answer prompts with a model, AlpacaEval-style: chat template in, only the new tokens out.

The reproduction this project grew from decoded prompt and answer together and used no chat
template, so its outputs began with the instruction. Here each prompt is one user turn through
the model's chat template (generation prompt added), batches are left-padded, and only tokens
after the prompt are decoded, special tokens skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import FormatError, UsageError
from ..format.writer import replace_file
from .diagnostics import read_records


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. ``PAPER`` is the ExPO paper's; ``GREEDY`` is for tests."""

    do_sample: bool = True
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    max_new_tokens: int = 2048
    seed: int = 42


PAPER = Sampling()
GREEDY = Sampling(do_sample=False, temperature=1.0, top_k=0, top_p=1.0)


def load_prompts(path: str | Path) -> list[dict]:
    """Prompts as ``{instruction, dataset}`` from AlpacaEval JSON/JSONL or a text file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read prompts ({exc.strerror})") from None
    if not (path.suffix in (".json", ".jsonl") or text.lstrip().startswith(("[", "{"))):
        return [{"instruction": line, "dataset": path.stem} for line in text.splitlines() if line.strip()]
    prompts = []
    for i, row in enumerate(read_records(path)):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise FormatError(f"{path}: record {i} has no string `instruction`")
        instruction = row["instruction"]
        if row.get("input"):
            instruction = f"{instruction}\n\n{row['input']}"
        prompts.append({"instruction": instruction, "dataset": row.get("dataset", path.stem)})
    return prompts


def load_model(model: str | Path, device: str, dtype: str | None, gguf_file: str | None = None):
    """(model, tokenizer) on ``device``; bf16 on CUDA and fp32 on CPU unless ``dtype`` says.

    ``model`` is a directory or a Hub repo id, found by :func:`expo_stream.hub.resolve` (a
    mistyped path fails at once, not after Hub retries).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hub import resolve

    model = resolve(model).path
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                   None: torch.bfloat16 if device.startswith("cuda") else torch.float32}[dtype]
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **kwargs)
    except OSError as exc:
        raise UsageError(f"{model}: cannot load model ({str(exc).splitlines()[0]})") from None
    lm.to(device).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


def render(tokenizer, instruction: str, template: str) -> tuple[str, bool]:
    """(text, add_special_tokens) for one prompt: the chat template, or the plain text."""
    if template == "plain":
        return instruction, True
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("the model's tokenizer has no chat template; pass --template plain to "
                         "feed raw prompts on purpose")
    text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                         add_generation_prompt=True, tokenize=False)
    return text, False  # the template already holds BOS and any special tokens


def run_settings(model_name: str, sampling: Sampling, template: str, batch_size: int) -> dict:
    """What decides the outputs of a generation run (batches are seeded by their first index)."""
    return {"model": str(model_name), "sampling": asdict(sampling), "template": template,
            "batch_size": batch_size}


def settings_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".settings.json")


def resumable(out: Path | None, prompts: list[dict], settings: dict, overwrite: bool = False) -> int:
    """How many prompts an existing ``out`` already answers, made with these same settings.

    Raises:
        UsageError: ``out`` exists but was made with other settings (or they were not
            recorded), and ``overwrite`` is off.
    """
    if out is None or not Path(out).exists():
        return 0
    try:
        recorded = json.loads(settings_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if recorded == settings:
        return len(_load_done(out, prompts))
    if overwrite:
        return 0
    if recorded is None:
        why = f"has no record of how it was made ({settings_path(out).name})"
    else:
        keys = sorted(k for k in settings if recorded.get(k) != settings[k])
        why = "was made with another " + ", ".join(keys) + "".join(
            f"; {k} was {recorded.get(k)!r}" for k in keys if k in ("model", "template"))
    raise UsageError(f"{out}: {why}; use --overwrite to start again, or another --out")


def generate_outputs(model, tokenizer, prompts: list[dict], *, sampling: Sampling = PAPER,
                     template: str = "chat", batch_size: int = 8, generator: str = "model",
                     out: Path | None = None, progress: bool = True,
                     overwrite: bool = False) -> list[dict]:
    """AlpacaEval records ``{instruction, output, generator, dataset}`` for every prompt.

    With ``out``, finished records are saved after each batch, and the model and settings in
    ``OUT.settings.json``. An existing ``out`` made with the same settings is resumed: prompts
    already answered there (same position and instruction) are skipped; one made otherwise is
    refused, or replaced with ``overwrite``. Each batch is seeded with ``sampling.seed + index
    of its first prompt``, so a resumed run samples what an uninterrupted one would.
    """
    import torch

    settings = run_settings(model.name_or_path, sampling, template, batch_size)
    kept = resumable(out, prompts, settings, overwrite)
    done = _load_done(out, prompts)[:kept] if kept else []
    if out is not None:
        _save(settings_path(out), settings)
    records = list(done)
    todo = list(range(len(done), len(prompts)))
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), initial=len(done), desc="generate", unit="prompt")
    device = next(model.parameters()).device
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        rendered = [render(tokenizer, prompts[i]["instruction"], template) for i in idx]
        enc = tokenizer([t for t, _ in rendered], return_tensors="pt", padding=True,
                        add_special_tokens=rendered[0][1]).to(device)
        torch.manual_seed(sampling.seed + idx[0])
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=sampling.do_sample,
                      pad_token_id=tokenizer.pad_token_id)
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
        with torch.no_grad():
            generated = model.generate(**enc, **kwargs)
        new_tokens = generated[:, enc["input_ids"].shape[1]:]  # left padding: prompts end together
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text in zip(idx, texts):
            records.append({"instruction": prompts[i]["instruction"], "output": text.strip(),
                            "generator": generator, "dataset": prompts[i]["dataset"]})
        if out is not None:
            _save(out, records)
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return records


def _load_done(out: Path | None, prompts: list[dict]) -> list[dict]:
    if out is None or not Path(out).is_file():
        return []
    try:
        rows = json.loads(Path(out).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FormatError(f"{out}: existing output is not JSON ({exc}); move it away to restart") from None
    done = []
    for row, prompt in zip(rows, prompts):
        if row.get("instruction") != prompt["instruction"]:
            break
        done.append(row)
    return done


def _save(out: Path, data) -> None:
    replace_file(out, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
