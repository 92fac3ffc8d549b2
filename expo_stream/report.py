"""Human-readable descriptions of a plan (for ``--dry-run``)."""

from __future__ import annotations

from collections import defaultdict

from .plan.planner import Plan


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def describe_plan(plan: Plan, backend: str) -> str:
    """Tensors, bytes, α per layer group and the output shards, one fact per line."""
    tensors = plan.tensors
    merged = [t for t in tensors if t.sft is not None]
    lines = [
        f"sft: {plan.sft.root} ({len(plan.sft.files)} file(s), {len(plan.sft.tensors)} tensors)",
        f"dpo: {plan.dpo.root} ({len(plan.dpo.files)} file(s), {len(plan.dpo.tensors)} tensors)",
        f"tensors: {len(merged)} extrapolated, {len(tensors) - len(merged)} copied from DPO",
        f"read: {_size(plan.input_bytes)}; write per model: {_size(plan.output_bytes)}",
        f"backend: {backend}",
    ]
    for i, schedule in enumerate(plan.schedules):
        lines.append(f"schedule {schedule.label}:")
        groups: dict[tuple, list[int]] = defaultdict(list)
        other: dict[tuple, int] = defaultdict(int)
        for t in merged:
            key = (t.alphas[i], t.why[i])
            if t.layer is not None and t.why[i] != "uniform" and not t.why[i].startswith("rule"):
                groups[(t.layer.stack,) + key].append(t.layer.index)
            else:
                other[key] += 1
        for (stack, alpha, why), layers in sorted(groups.items(), key=lambda kv: (kv[0][0], min(kv[1]))):
            lines.append(f"  {stack} layers {min(layers)}-{max(layers)}: alpha={alpha:g} ({why})")
        for (alpha, why), count in sorted(other.items()):
            lines.append(f"  {count} tensor(s): alpha={alpha:g} ({why})")
    lines.append(f"output shards ({len(plan.shards)}):")
    for shard in plan.shards:
        lines.append(f"  {shard.filename}: {len(shard.tensors)} tensors, {_size(shard.file_bytes)}")
    return "\n".join(lines)
