"""``mm train-ddpo``: DDPO training of the LLaVA model's LoRA adapters and projector.

The loop is hand-written (TRL's DPOTrainer has no per-token weights): each optimizer step takes a
global batch of pairs in micro-batches; every micro-batch adds ``Σ pair losses / global batch
size`` to the gradient, which is the seed's "loss divided by the accumulation steps" and stays
right when a micro-batch is halved or the last batch of an epoch is short.

The reference model is the start model itself: the same forward pass with the adapters disabled
(PEFT also switches the projector back to its untrained original), on the same micro-batch, without
gradients. So the reference is frozen, costs no second copy, and at step 0 policy and reference
scores are equal bit for bit (the loss is exactly log 2).

Precision: ``fp32`` (the CPU default); ``bf16`` autocast with no GradScaler (bf16 has fp32's range);
``fp16`` autocast with a GradScaler, which is only sound with fp32 master weights, so trainable
parameters are always kept in float32. On ``torch.OutOfMemoryError`` the step's gradients are
dropped, the micro-batch halved (the global batch stays) and the step retried; at micro-batch 1
training stops with a :class:`TrainingError`.

Layout of ``--out``: ``expo_mm_run.json`` (start model, data, config), ``start/`` (when the start
model was built here), ``checkpoints/step-N/`` (each epoch end and every ``save_every`` steps:
adapters, projector, processor, model and training config, optimizer, trainer state), then at
the end ``adapter/``, ``projector.safetensors``, ``metrics.jsonl`` (per step),
``eval_metrics.jsonl`` (the ``test`` split, at each epoch end and the end) and ``metrics.png``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import TrainingError, UsageError
from ..format.writer import check_disjoint, publish
from . import ddpo
from .model import (ADAPTER_DIR, PROJECTOR_FILE, RUN_FILE, START_DIR, add_adapters,
                    load_model_dir, projector_state, read_run, start_of)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
METRICS_FILE = "metrics.jsonl"
EVAL_METRICS_FILE = "eval_metrics.jsonl"
STATE_FILE = "trainer_state.json"


def _setting(default, help: str, *, kind: type | None = None, flag: str | None = None,
             run_default: bool = False, **bounds):
    """A TrainConfig field with what ``mm train-ddpo`` needs to offer it as an option.

    ``kind`` (the value's type) is given where the default cannot show it (None);
    ``bounds`` are ``min``, ``max``, ``min_open``, ``max_open`` or ``choices``; ``run_default`` marks a default that
    :meth:`TrainConfig.for_run` chooses per run. The CLI builds its options from these,
    so a default or a limit is written once, here.
    """
    return field(default=default, metadata=dict(help=help, type=kind or type(default),
                                                flag=flag, run_default=run_default, **bounds))


@dataclass(frozen=True)
class TrainConfig:
    """DDPO settings; the defaults are the seed's (RLHF-V on a 3B model)."""

    lr: float = _setting(2e-6, "AdamW learning rate (1e-3 with --tiny).", min=0, min_open=True)
    epochs: int = _setting(3, "Passes over the training split.", min=1)
    batch_size: int = _setting(8, "Global batch (pairs per optimizer step).", min=1)
    micro_batch_size: int = _setting(
        2, "Pairs per forward pass (halved on out-of-memory); gradients accumulate.", min=1)
    weight_decay: float = _setting(0.01, "AdamW weight decay.", min=0)
    warmup_ratio: float = _setting(0.03, "Fraction of steps with a linear learning-rate warm-up.",
                                   min=0, max=1)
    beta: float = _setting(0.1, "DPO's β.", min=0, min_open=True)
    gamma: float = _setting(2.0, "Weight of corrected-segment tokens.", min=0, min_open=True)
    reduction: str = _setting("mean", "Sequence score: weighted mean (RLHF-V eq. 5) or weighted "
                              "sum (released code).", choices=ddpo.REDUCTIONS)
    max_prompt_length: int = _setting(
        256, "Question tokens kept (cut from the question, never the image tokens).", min=1)
    max_response_length: int = _setting(256, "Response tokens kept.", min=1)
    max_steps: int | None = _setting(None, "Stop after this many optimizer steps.", kind=int,
                                     flag="--steps", min=1)
    precision: str = _setting("fp32", "fp32 (the CPU default), bf16 (autocast, no GradScaler; "
                              "the CUDA default) or fp16 (autocast + GradScaler; CUDA without "
                              "bf16).", choices=PRECISIONS, run_default=True)
    lora_rank: int = _setting(8, "LoRA rank on the language model's q/k/v/o.", min=1)
    lora_alpha: int = _setting(16, "LoRA α (default: twice the rank).", min=1,
                               run_default=True)
    lora_dropout: float = _setting(0.05, "Dropout on the LoRA layers.", min=0, max=1,
                                   max_open=True)
    save_every: int | None = _setting(None, "Also checkpoint every N steps.", kind=int, min=1)
    seed: int = _setting(42, "Seed for the tiny model, data order and dropout.")

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.reduction not in ddpo.REDUCTIONS:
            raise UsageError(f"--reduction must be one of {', '.join(ddpo.REDUCTIONS)}")
        if self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size:
            raise UsageError(f"--batch-size {self.batch_size} must be a multiple of "
                             f"--micro-batch-size {self.micro_batch_size}")
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise UsageError("--epochs and --steps must be at least 1")

    @classmethod
    def for_run(cls, *, tiny: bool = False, device: str = "cpu", **given) -> TrainConfig:
        """The config for a run: ``given`` values (None = not given) over the defaults.

        Defaults that depend on the run: ``lr`` 1e-3 for the tiny model (2e-6 is the seed's
        for a pretrained 3B model and would not move a random one), ``lora_alpha`` twice
        ``lora_rank``, ``precision`` by device (:func:`default_precision`).
        """
        values = {k: v for k, v in given.items() if v is not None}
        if tiny:
            values.setdefault("lr", 1e-3)
        values.setdefault("lora_alpha", 2 * values.get("lora_rank", cls.lora_rank))
        values.setdefault("precision", default_precision(device))
        return cls(**values)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    micro_batch_size: int = 2


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then linear decay; ``step`` counts from 1."""
    if step <= warmup:
        return step / warmup
    return max(0.0, (total - step + 1) / (total - warmup))


def default_precision(device: str) -> str:
    """fp32 on CPU; on CUDA bf16 where the GPU has it (Ampere on), else fp16 with a GradScaler."""
    import torch

    if not str(device).startswith("cuda"):
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(precision: str, device):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """One DDPO run: ``Trainer(...).run()``; see the module docstring for what it writes."""

    def __init__(self, net, processor, dataset, out: Path, config: TrainConfig, *,
                 device: str = "cpu", resume: bool = False, eval_dataset=None, progress=None):
        import torch

        self.progress = progress  # called as progress(metrics, done_steps, total_steps)

        self.config, self.out, self.dataset = config, Path(out), dataset
        self.eval_dataset = eval_dataset
        self.processor, self.device = processor, torch.device(device)
        self.model_config = net.config
        torch.manual_seed(config.seed)
        self.net = add_adapters(net, rank=config.lora_rank, alpha=config.lora_alpha,
                                dropout=config.lora_dropout)
        for p in self.net.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # fp32 master weights, whatever the base dtype
        self.net.to(self.device)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scaler = (torch.amp.GradScaler(self.device.type) if config.precision == "fp16"
                       else None)
        self.steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
        self.total = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total = min(self.total, config.max_steps)
        self.warmup = math.ceil(config.warmup_ratio * self.total)
        self.state = State(micro_batch_size=config.micro_batch_size)
        if resume:
            self._resume()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> dict:
        """Train to the end (or ``max_steps``); returns the last step's metrics."""
        self.net.train()
        last = {}
        while self.state.step < self.total:
            order = self._order(self.state.epoch)
            bs = self.config.batch_size
            while self.state.batch_in_epoch * bs < len(order) and self.state.step < self.total:
                chosen = order[self.state.batch_in_epoch * bs:(self.state.batch_in_epoch + 1) * bs]
                last = self._step([self.dataset[i] for i in chosen])
                if self.progress is not None:
                    self.progress(last, self.state.step, self.total)
                self.state.batch_in_epoch += 1
                epoch_done = self.state.batch_in_epoch * bs >= len(order)
                if epoch_done:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
                    self.evaluate()
                every = self.config.save_every
                if epoch_done or (every and self.state.step % every == 0):
                    self.save_checkpoint()
                if epoch_done:
                    break
        if self.state.batch_in_epoch:  # stopped by max_steps inside an epoch
            self.evaluate()
        self._save_final()
        return last

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.dataset)))
        random.Random(f"{self.config.seed}:{epoch}").shuffle(order)
        return order

    def _step(self, samples: list[dict]) -> dict:
        import torch

        step = self.state.step + 1
        lr = self.config.lr * lr_factor(step, self.total, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        while True:
            try:
                stats = self._accumulate(samples)
                break
            except torch.OutOfMemoryError:
                pass
            # Out of the except block, so the failed attempt's tensors are unreachable.
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if self.state.micro_batch_size == 1:
                raise TrainingError(f"out of memory at step {step} with micro-batch 1; shorten "
                                    "--max-prompt-length/--max-response-length or use a "
                                    "smaller model")
            self.state.micro_batch_size //= 2
            log.warning("out of memory at step %d: retrying with micro-batch %d", step,
                        self.state.micro_batch_size)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step = step
        metrics = {"step": step, "epoch": round(step / self.steps_per_epoch, 4),
                   **summarize(stats), "lr": lr, "micro_batch": self.state.micro_batch_size}
        _append(self.out / METRICS_FILE, metrics)
        log.info("step %d/%d loss %.6f acc %.3f", step, self.total, metrics["loss"],
                 metrics["rewards/accuracy"])
        return metrics

    def evaluate(self) -> dict | None:
        """Loss, reward accuracy and margins on the eval split (``eval_metrics.jsonl``)."""
        import torch

        if not self.eval_dataset:
            return None
        stats = []
        self.net.eval()
        with torch.no_grad():
            for start in range(0, len(self.eval_dataset), self.state.micro_batch_size):
                end = min(start + self.state.micro_batch_size, len(self.eval_dataset))
                stats.append(self._losses(self.batch([self.eval_dataset[i]
                                                      for i in range(start, end)])))
        self.net.train()
        metrics = {"step": self.state.step, **summarize(stats)}
        _append(self.out / EVAL_METRICS_FILE, metrics)
        return metrics

    def _accumulate(self, samples: list[dict]):
        n, micro = len(samples), self.state.micro_batch_size
        stats = []
        for start in range(0, n, micro):
            loss, chosen, rejected = self._losses(self.batch(samples[start:start + micro]))
            scaled = loss.sum() / n
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            stats.append((loss.detach(), chosen, rejected))
        return stats

    def _losses(self, batch: dict):
        """Per-pair DDPO loss and rewards: the reference is this forward with adapters off."""
        import torch

        cfg = self.config
        with torch.no_grad(), self.net.disable_adapter(), autocast(cfg.precision, self.device):
            reference = ddpo.scores(self.net, batch, cfg.reduction)
        with autocast(cfg.precision, self.device):
            policy = ddpo.scores(self.net, batch, cfg.reduction)
        return ddpo.ddpo_loss(policy, reference, cfg.beta)

    def batch(self, samples: list[dict]) -> dict:
        """Encode and collate samples, on the training device."""
        cfg = self.config
        items = [ddpo.encode(s, self.processor, self.model_config, gamma=cfg.gamma,
                             max_prompt_length=cfg.max_prompt_length,
                             max_response_length=cfg.max_response_length) for s in samples]
        batch = ddpo.collate(items, self.processor.tokenizer.pad_token_id)
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}

    # -- checkpoints ------------------------------------------------------------------------

    def _write_weights(self, where: Path) -> None:
        from safetensors.torch import save_file

        self.net.save_pretrained(where / ADAPTER_DIR)
        save_file({k: v.cpu() for k, v in projector_state(self.net).items()},
                  where / PROJECTOR_FILE)

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N/``, written under a hidden name and renamed when complete."""
        import torch

        final = self.out / "checkpoints" / f"step-{self.state.step}"
        final.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            self._write_weights(tmp)
            self.processor.save_pretrained(tmp / "processor")
            self.model_config.save_pretrained(tmp)
            (tmp / "train_config.json").write_text(json.dumps(asdict(self.config), indent=1) + "\n")
            torch.save({"optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict() if self.scaler else None,
                        "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
            (tmp / STATE_FILE).write_text(json.dumps(asdict(self.state)) + "\n")

        # A resumed run re-saves the step it resumed from: replacing our own checkpoint.
        return publish(final, write, overwrite=True)

    def _resume(self) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        found = sorted((p for p in (self.out / "checkpoints").glob("step-*")
                        if (p / STATE_FILE).is_file()), key=lambda p: int(p.name[5:]))
        if not found:
            raise TrainingError(f"{self.out}: no checkpoint to resume from")
        ckpt = found[-1]
        set_peft_model_state_dict(self.net, load_file(ckpt / ADAPTER_DIR /
                                                      "adapter_model.safetensors"))
        saved = torch.load(ckpt / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler and saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = State(**json.loads((ckpt / STATE_FILE).read_text()))
        for metrics in (self.out / METRICS_FILE, self.out / EVAL_METRICS_FILE):
            if metrics.is_file():  # drop lines logged after the checkpoint
                kept = [line for line in metrics.read_text().splitlines()
                        if json.loads(line)["step"] <= self.state.step]
                metrics.write_text("".join(line + "\n" for line in kept))
        log.info("resumed from %s (step %d)", ckpt, self.state.step)

    def _save_final(self) -> None:
        tmp = self.out / ".final.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self._write_weights(tmp)
        for name in (ADAPTER_DIR, PROJECTOR_FILE):
            target = self.out / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(tmp / name, target)
        tmp.rmdir()
        plot_metrics(self.out / METRICS_FILE, self.out / "metrics.png")
        run = read_run(self.out)
        run["finished_step"] = self.state.step
        (self.out / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")


def summarize(stats) -> dict:
    """Mean loss and rewards over ``(loss, chosen_rewards, rejected_rewards)`` batches."""
    import torch

    losses, chosen, rejected = (torch.cat(x) for x in zip(*stats, strict=True))
    return {"loss": losses.mean().item(), "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": rejected.mean().item(),
            "rewards/accuracy": (chosen > rejected).double().mean().item(),
            "rewards/margin": (chosen - rejected).mean().item()}


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_metrics(metrics: Path, png: Path) -> None:
    """Loss, reward accuracy and margin per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = metrics.with_name(EVAL_METRICS_FILE)
    evals = [json.loads(line) for line in evals.read_text().splitlines()] if evals.is_file() else []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key in zip(axes, ("loss", "rewards/accuracy", "rewards/margin"), strict=True):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", label="train")
        if evals:
            ax.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label="eval")
            ax.legend()
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def check_run_dir(out: Path, inputs=(), overwrite: bool = False) -> bool:
    """Whether a new run must first remove an old one at ``out``; refuses what must not go.

    Raises:
        UsageError: ``out`` is, holds or lies inside an input; or it is not empty and either
            ``overwrite`` is off or it is not a training run (no ``expo_mm_run.json``).
    """
    out = Path(out)
    check_disjoint(out, list(inputs))
    if not (out.exists() and any(out.iterdir())):
        return False
    if not overwrite:
        raise UsageError(f"{out}: exists and is not empty (use --overwrite or --resume)")
    if not (out / RUN_FILE).is_file():
        raise UsageError(f"{out}: not a training run ({RUN_FILE} missing); --overwrite replaces "
                         "only runs expo-stream made, so move it away yourself")
    return True


def train_ddpo(out: str | Path, *, net=None, processor=None, dataset=None, eval_dataset=None,
               start=None, data_source=None, config: TrainConfig = TrainConfig(),
               device: str = "cpu", resume: bool = False, overwrite: bool = False,
               inputs: tuple[Path, ...] = (), progress=None) -> dict:
    """Train, checkpoint and save a DDPO run in ``out``; returns the last step's metrics.

    Args:
        net, processor: the start model (:func:`.model.start_model`); ignored on resume.
        dataset: the ``train`` split of a preprocessed dataset (:mod:`.data`).
        eval_dataset: its ``test`` split, if any: evaluated at each epoch end and at the end.
        start: the start model's directory if it is on disk already; otherwise the model is
            saved to ``out/start`` so export and merge have it.
        data_source: how the data was given, recorded in ``expo_mm_run.json``.
        resume: continue from the latest checkpoint in ``out`` with the recorded config.
        overwrite: replace an existing run in ``out`` (only a run directory, never one that
            holds or lies inside ``inputs``).
        inputs: the paths the run reads (start model parts, data).
        progress: called after each optimizer step as ``progress(metrics, step, total)``.
    """
    out = Path(out)
    if resume:
        run = read_run(out)
        config = TrainConfig.from_dict(run["config"])
        net, processor = load_model_dir(start_of(out))
    else:
        if check_run_dir(out, inputs, overwrite):
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if start is None:
            net.save_pretrained(out / START_DIR)
            processor.save_pretrained(out / START_DIR)
            start = START_DIR
        else:
            start = str(Path(start).resolve())
        run = {"start": str(start), "data": data_source, "config": asdict(config)}
        (out / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")
    if len(dataset) == 0:
        raise UsageError("the training split is empty")
    trainer = Trainer(net, processor, dataset, out, config, device=device, resume=resume,
                      eval_dataset=eval_dataset, progress=progress)
    return trainer.run()
