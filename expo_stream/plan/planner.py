"""The plan: a frozen list of shard jobs, each a list of tensor jobs, built from headers alone.

Every name, shape and dtype mismatch is found here, before a byte of tensor data is read. Each
shard of the output is an independent job (its header, and every tensor's byte range in it, are
fixed here), so an executor may run shards, or chunks of tensors, in any order and in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import PlanError
from ..format.checkpoint import Checkpoint, group_shards, shard_name
from ..format.dtypes import ITEMSIZE, MERGEABLE, is_float
from ..format.safetensors import TensorInfo, encode_header
from .options import MergeOptions
from .schedule import LayerRef, Schedule, group_of, layer_table

SHOWN = 3  # examples per kind of mismatch in a PlanError; the rest are counted
# config.json fields that decide tensor names and shapes: a difference explains a mismatch.
ARCHITECTURE_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size",
                     "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "vocab_size", "head_dim", "tie_word_embeddings")
HEADER_METADATA = {"format": "pt"}


@dataclass(frozen=True)
class TensorJob:
    """One output tensor. ``sft is None`` means a byte copy of ``dpo``."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # output dtype
    dpo: TensorInfo
    sft: TensorInfo | None
    alphas: tuple[float, ...]  # one per schedule; empty for copies
    why: tuple[str, ...]  # which schedule rule set each α
    layer: LayerRef | None
    offset: int  # byte offset inside the shard's data section

    @property
    def numel(self) -> int:
        return self.dpo.numel

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class ShardJob:
    """One output file, identical in layout for every schedule."""

    index: int
    filename: str
    header: bytes  # the 8-byte length and the padded JSON
    tensors: tuple[TensorJob, ...]

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        return len(self.header) + self.data_bytes


@dataclass(frozen=True)
class Plan:
    sft: Checkpoint
    dpo: Checkpoint
    options: MergeOptions
    shards: tuple[ShardJob, ...]
    warnings: tuple[str, ...] = ()  # legal but probably not meant: printed by merge and --dry-run

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        return self.options.schedules

    @property
    def tensors(self) -> tuple[TensorJob, ...]:
        return tuple(t for s in self.shards for t in s.tensors)

    @property
    def output_bytes(self) -> int:
        """Tensor bytes of one output model."""
        return sum(s.data_bytes for s in self.shards)

    @property
    def input_bytes(self) -> int:
        """Tensor bytes read from both inputs."""
        return sum(t.dpo.nbytes + (t.sft.nbytes if t.sft else 0) for t in self.tensors)

    def weight_map(self) -> dict[str, str]:
        return {t.name: s.filename for s in self.shards for t in s.tensors}


def build_plan(sft: Checkpoint, dpo: Checkpoint, options: MergeOptions) -> Plan:
    """Pair tensors by name, check them, assign α and lay out the output shards.

    Raises:
        PlanError: listing every name, shape and dtype mismatch at once, or a schedule that does
            not fit the model (layer α on a model without layers, a per-layer list of the wrong
            length).
    """
    if sorted(f.id for f in sft.files) == sorted(f.id for f in dpo.files):
        raise PlanError(f"SFT {sft} and DPO {dpo} are the same files: the difference "
                        "is zero everywhere, so every α gives DPO back")
    problems: list[str] = []
    only_sft = [n for n in sft.tensors if n not in dpo.tensors]
    if only_sft:
        problems.append(_names("only in SFT", only_sft))
    only_dpo = [n for n in dpo.tensors if n not in sft.tensors]
    if only_dpo and not options.copy_unmatched:
        problems.append(_names("only in DPO (use --copy-unmatched to copy them)", only_dpo))

    layers = layer_table(list(dpo.tensors))
    if any(s.is_layerwise for s in options.schedules) and not layers:
        raise PlanError(
            f"{dpo}: layer α given but no tensor name holds a layer index "
            f"(looked for `<stack>.layers.N.`, `.h.N.`, `.blocks.N.`; first tensor: "
            f"{next(iter(dpo.tensors), '')!r})"
        )
    _check_layer_count(dpo, layers)
    warnings = _empty_groups(options.schedules, layers)

    jobs: list[TensorJob] = []
    mismatched: list[str] = []
    for name, d in dpo.tensors.items():
        s = sft.tensors.get(name)
        if s is None:
            if options.copy_unmatched:
                jobs.append(_copy_job(name, d, layers.get(name)))
            continue
        problem = _mismatch(name, s, d)
        if problem:
            mismatched.append(problem)
            continue
        if d.dtype not in MERGEABLE:
            jobs.append(_copy_job(name, d, layers.get(name)))
            continue
        layer = layers.get(name)
        decided = [sch.alpha_for(name, layer) for sch in options.schedules]
        jobs.append(TensorJob(
            name=name, shape=d.shape, dtype=options.dtype or d.dtype, dpo=d, sft=s,
            alphas=tuple(a for a, _ in decided), why=tuple(w for _, w in decided),
            layer=layer, offset=0,
        ))
    if mismatched:
        shown = "; ".join(mismatched[:SHOWN])
        more = f"; and {len(mismatched) - SHOWN} more" if len(mismatched) > SHOWN else ""
        problems.append(f"{len(mismatched)} tensor(s) differ in shape or dtype: {shown}{more}")
    if problems:
        config = _config_difference(sft.config, dpo.config)  # the likely cause, said first
        if config:
            problems.insert(0, f"configs differ ({config})")
        raise PlanError(
            f"SFT {sft} and DPO {dpo} cannot be merged: " + "; ".join(problems)
        )
    return Plan(sft=sft, dpo=dpo, options=options, shards=_layout(jobs, options.max_shard_size),
                warnings=warnings)


def _mismatch(name: str, s: TensorInfo, d: TensorInfo) -> str | None:
    if s.shape != d.shape:
        return f"tensor {name!r}: shape {list(s.shape)} in SFT vs {list(d.shape)} in DPO"
    if is_float(s.dtype) != is_float(d.dtype):
        return f"tensor {name!r}: dtypes {s.dtype} (SFT) and {d.dtype} (DPO) are not mergeable"
    if is_float(d.dtype):
        for dt, side in ((s.dtype, "SFT"), (d.dtype, "DPO")):
            if dt not in MERGEABLE:
                return f"tensor {name!r}: {side} dtype {dt} is not supported (BF16, F16, F32)"
    elif s.dtype != d.dtype:
        return f"tensor {name!r}: integer dtypes differ, {s.dtype} (SFT) vs {d.dtype} (DPO)"
    return None


def _copy_job(name: str, d: TensorInfo, layer: LayerRef | None) -> TensorJob:
    return TensorJob(name=name, shape=d.shape, dtype=d.dtype, dpo=d, sft=None, alphas=(),
                     why=(), layer=layer, offset=0)


def _names(what: str, names: list[str]) -> str:
    shown = ", ".join(f"{n!r}" for n in names[:SHOWN])
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{len(names)} tensor(s) {what}: {shown}{more}"


def _config_difference(sft: dict, dpo: dict) -> str:
    """The architecture fields two configs disagree on, e.g. ``hidden_size 64 vs 576``."""
    differ = [f"{key} {sft[key]!r} vs {dpo[key]!r}" for key in ARCHITECTURE_KEYS
              if key in sft and key in dpo and sft[key] != dpo[key]]
    return ", ".join(differ)


def _empty_groups(schedules, layers: dict[str, LayerRef]) -> tuple[str, ...]:
    """A warning per stack with fewer layers than a schedule has groups: some α go unused."""
    stacks = dict(sorted({ref.stack: ref.count for ref in layers.values()}.items()))
    found = []
    for schedule in schedules:
        groups = schedule.layer_alphas
        if not groups:
            continue
        for stack, count in stacks.items():
            if count < len(groups):
                used = sorted({group_of(i, count, len(groups)) for i in range(count)})
                unused = [f"{groups[j]:g}" for j in range(len(groups)) if j not in used]
                given = ",".join(f"{a:g}" for a in groups)
                found.append(f"--layer-alphas {given}: {stack!r} has {count} layer(s) "
                             f"for {len(groups)} groups; α {', '.join(unused)} apply to none of them")
    return tuple(found)


def _check_layer_count(dpo: Checkpoint, layers: dict[str, LayerRef]) -> None:
    stacks = {ref.stack: ref.count for ref in layers.values()}
    expected = dpo.config.get("num_hidden_layers")
    if len(stacks) == 1 and isinstance(expected, int):
        (stack, count), = stacks.items()
        if count != expected:
            raise PlanError(
                f"{dpo.root / 'config.json'}: num_hidden_layers is {expected} but tensor names "
                f"under {stack!r} hold {count} layers"
            )


def _layout(jobs: list[TensorJob], max_shard_size: int) -> tuple[ShardJob, ...]:
    """Greedy shards in DPO's on-disk order, as transformers' shard_checkpoint does."""
    groups = group_shards([job.nbytes for job in jobs], max_shard_size)
    shards = []
    for i, group in enumerate(groups):
        placed, offset = [], 0
        for job in (jobs[k] for k in group):
            placed.append(replace(job, offset=offset))
            offset += job.nbytes
        header = encode_header(((t.name, t.dtype, t.shape) for t in placed), HEADER_METADATA)
        shards.append(ShardJob(i, shard_name(i, len(groups)), header, tuple(placed)))
    return tuple(shards)
