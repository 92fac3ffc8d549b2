"""Does extrapolating a weakly DDPO-trained multimodal model help? The toy, end to end.

    python bench/mm_toy_expo.py --workdir /tmp/mm-bench --out bench/mm_toy_expo.json

On the tiny LLaVA and the toy square-colour preference (expo_stream/multimodal/tiny.py): train
DDPO briefly (``--weak-steps``) and fully (``--strong-steps``), export both, extrapolate the weak
one from the start model at several α in one merge pass, and score every model on held-out pairs
(other wrong colours, seed 1): preference accuracy and margin of the mean token log-prob
(chosen vs rejected, γ = 1), the implicit DDPO reward margin against the start model, and whether
greedy answers to "What color is the square?" name the right colour. Writes JSON and prints a
Markdown table (bench/MM.md holds the committed one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from expo_stream.execute.merge import merge
from expo_stream.multimodal import ddpo
from expo_stream.multimodal.data import build
from expo_stream.multimodal.export import export
from expo_stream.multimodal.model import load_model_dir, start_model
from expo_stream.multimodal.tiny import COLORS, square_png, toy_rows
from expo_stream.multimodal.train import TrainConfig, train_ddpo

BETA = 0.1


def held_out(processor):
    rows = toy_rows(32, seed=1)
    for r in rows:
        r["idx"] += 1000
    return build(rows, processor.tokenizer)[0]["train"]


def train(workdir: Path, steps: int, rows, seed: int) -> Path:
    net, processor = start_model(tiny=True, seed=seed)
    run = workdir / f"run-{steps}"
    train_ddpo(run, net=net, processor=processor, dataset=rows,
               config=TrainConfig(lr=1e-3, max_steps=steps, epochs=100, seed=seed),
               overwrite=True, data_source={"tiny": len(rows)})
    export(run, workdir / f"ddpo-{steps}", overwrite=True)
    return run


@torch.no_grad()
def evaluate(model_dir: Path, pairs, start_scores=None) -> tuple[dict, torch.Tensor]:
    net, processor = load_model_dir(model_dir)
    net.eval()
    items = [ddpo.encode(s, processor, net.config, gamma=1.0) for s in pairs]
    batch = ddpo.collate(items, processor.tokenizer.pad_token_id)
    scores = ddpo.scores(net, batch, "mean")
    half = len(items)
    chosen, rejected = scores[:half], scores[half:]
    out = {"pref_accuracy": (chosen > rejected).double().mean().item(),
           "logp_margin": (chosen - rejected).mean().item()}
    if start_scores is not None:
        _, c_rw, r_rw = ddpo.ddpo_loss(scores, start_scores, BETA)
        out["reward_margin"] = (c_rw - r_rw).mean().item()
    right = 0
    for colour in COLORS:
        from io import BytesIO

        from PIL import Image

        image = Image.open(BytesIO(square_png(colour)))
        ids, pixels = ddpo.encode_prompt(processor, net.config, "What color is the square?", image)
        gen = net.generate(input_ids=torch.tensor([ids]), pixel_values=pixels[None],
                           attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=12, do_sample=False,
                           pad_token_id=processor.tokenizer.pad_token_id)
        text = processor.tokenizer.decode(gen[0, len(ids):], skip_special_tokens=True)
        named = {c for c in COLORS if c in text}
        right += named == {colour}
    out["answers_right"] = f"{right}/{len(COLORS)}"
    return out, scores


def one_seed(workdir: Path, seed: int, weak_steps: int, strong_steps: int,
             alphas: list[float]) -> list[dict]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    _, processor = start_model(tiny=True, seed=seed)
    rows = build(toy_rows(32), processor.tokenizer)[0]["train"]
    ds = held_out(processor)
    pairs = [ds[i] for i in range(len(ds))]
    weak = train(workdir, weak_steps, rows, seed)
    train(workdir, strong_steps, rows, seed)
    merge(weak / "start", workdir / f"ddpo-{weak_steps}", workdir / "expo", alpha=alphas,
          overwrite=True)
    models = [("start", weak / "start"), (f"DDPO {weak_steps} steps", workdir / f"ddpo-{weak_steps}")]
    models += [(f"ExPO α={a:g} of DDPO {weak_steps}", workdir / "expo" / f"alpha-{a:g}")
               for a in alphas]
    models.append((f"DDPO {strong_steps} steps", workdir / f"ddpo-{strong_steps}"))
    results, start_scores = [], None
    for name, path in models:
        row, scores = evaluate(path, pairs, start_scores)
        start_scores = scores if start_scores is None else start_scores
        results.append({"model": name, "seed": seed, **row})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mm-bench"))
    ap.add_argument("--out", type=Path, default=Path("bench/mm_toy_expo.json"))
    ap.add_argument("--weak-steps", type=int, default=3)
    ap.add_argument("--strong-steps", type=int, default=24)
    ap.add_argument("--alphas", default="0.5,1,2,4,8")
    ap.add_argument("--seeds", default="42,43,44")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    alphas = [float(a) for a in args.alphas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = [r for seed in seeds
               for r in one_seed(args.workdir, seed, args.weak_steps, args.strong_steps, alphas)]
    record = {"weak_steps": args.weak_steps, "strong_steps": args.strong_steps, "seeds": seeds,
              "held_out_pairs": 32, "seconds": round(time.perf_counter() - t0, 1),
              "results": results}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"mean over seeds {args.seeds}\n")
    print("| model | held-out pref. accuracy | log-p margin | reward margin vs start | "
          "greedy answers right |\n|---|---|---|---|---|")
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows)
                for k in ("pref_accuracy", "logp_margin", "reward_margin")}
        right = sum(int(r["answers_right"].split("/")[0]) for r in rows)
        print(f"| {name} | {mean['pref_accuracy']:.3f} | {mean['logp_margin']:.4f} | "
              f"{mean['reward_margin']:.5f} | {right}/{4 * len(rows)} |")


if __name__ == "__main__":
    main()
