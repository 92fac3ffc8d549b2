"""Human-readable descriptions of a plan (for ``--dry-run``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .plan.planner import Plan


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class AlphaRow:
    """One line of an α schedule: a layer range of one stack, or a count of other tensors."""

    alpha: float | None  # None for tensors copied from DPO
    why: str
    stack: str | None = None
    first: int = 0
    last: int = 0
    count: int = 0


def schedule_rows(plan: Plan, which: int) -> list[AlphaRow]:
    """Schedule ``which`` of ``plan`` by layer group of each stack, then the other tensors."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    others: dict[tuple, int] = defaultdict(int)
    for t in plan.tensors:
        if t.sft is None:
            others[(None, "copied from DPO")] += 1
            continue
        alpha, why = t.alphas[which], t.why[which]
        if t.layer is not None and not why.startswith("rule"):
            groups[(t.layer.stack, alpha, why)].append(t.layer.index)
        else:
            others[(alpha, why)] += 1
    rows = [AlphaRow(alpha, why, stack, min(ix), max(ix))
            for (stack, alpha, why), ix in sorted(groups.items(), key=lambda kv: (kv[0][0], min(kv[1])))]
    rows += [AlphaRow(alpha, why, count=n)
             for (alpha, why), n in sorted(others.items(), key=lambda kv: (kv[0][0] is None, kv[0]))]
    return rows


def describe_plan(plan: Plan, backend: str) -> str:
    """Tensors, bytes, α per layer group and the output shards, one fact per line."""
    tensors = plan.tensors
    merged = [t for t in tensors if t.sft is not None]
    lines = [
        f"sft: {plan.sft} ({len(plan.sft.files)} file(s), {len(plan.sft.tensors)} tensors)",
        f"dpo: {plan.dpo} ({len(plan.dpo.files)} file(s), {len(plan.dpo.tensors)} tensors)",
        f"tensors: {len(merged)} extrapolated, {len(tensors) - len(merged)} copied from DPO",
        f"read: {_size(plan.input_bytes)}; write per model: {_size(plan.output_bytes)}",
        f"backend: {backend}",
    ]
    for i, schedule in enumerate(plan.schedules):
        lines.append(f"schedule {schedule.label}:")
        for row in schedule_rows(plan, i):
            if row.alpha is None:
                continue  # counted in the tensors line
            what = (f"{row.stack} layers {row.first}-{row.last}" if row.stack is not None
                    else f"{row.count} tensor(s)")
            lines.append(f"  {what}: alpha={row.alpha:g} ({row.why})")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines.append(f"output shards ({len(plan.shards)}):")
    for shard in plan.shards:
        lines.append(f"  {shard.filename}: {len(shard.tensors)} tensors, {_size(shard.file_bytes)}")
    return "\n".join(lines)
