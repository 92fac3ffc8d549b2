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


def describe_costs(plan: Plan, *, stream: bool, local_copy: bool, threads: int,
                   chunk_elements: int) -> str:
    """What the chosen mode needs (bytes downloaded, peak local disk and RAM), and the same for
    downloading the inputs first, one line each.

    Estimates from the plan: the RAM figures count the engine's buffers (three per thread, and
    with ``stream`` a window of ranges for the two or three input files read at once) plus
    ~50 MiB for the interpreter and libraries; disk counts what the run writes or downloads.
    """
    from .sources.hub import RANGE_BYTES, WINDOW

    hub_files = [f for ck in (plan.sft, plan.dpo) for f in ck.files
                 if f.source == "hub" or "/snapshots/" in f.id]  # streamed, or downloaded
    remote = sum(f.size for f in hub_files)
    n = len(plan.schedules)
    output = sum(s.file_bytes for s in plan.shards) * n
    biggest = max((s.file_bytes for s in plan.shards), default=0) * n
    engine = threads * 3 * chunk_elements * 4 + 50 * 2**20
    windows = min(3, len(hub_files)) * WINDOW * RANGE_BYTES
    first_disk = remote + output
    if stream:
        disk = output if local_copy else 2 * biggest
        mode = "stream" + (" to --out" if local_copy else ", shard by shard to the Hub")
        chosen = (f"{mode}: download {_size(remote)}, peak disk {_size(disk)}, "
                  f"RAM ~{_size(engine + windows)}")
    else:
        chosen = (f"download first: download {_size(remote)}, peak disk {_size(first_disk)}, "
                  f"RAM ~{_size(engine)}")
    other = (f"(download first instead: download {_size(remote)}, peak disk {_size(first_disk)}, "
             f"RAM ~{_size(engine)})" if stream else
             f"(--stream --push-to instead: peak disk {_size(2 * biggest)}, RAM ~{_size(engine + 3 * WINDOW * RANGE_BYTES)})")
    return f"cost: {chosen}\n{other}"
