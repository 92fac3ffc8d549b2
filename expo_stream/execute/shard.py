"""The unit of work: one output shard of a plan, computed into a staging directory.

A :class:`ShardTask` is plain, picklable data (the plan, which shard, where to write it, how), and
:func:`compute_shard` needs nothing else: it opens its own input readers and its own output
files, streams the shard's chunks through the kernel (:func:`~.executor.run_plan`), syncs what
it wrote and returns the shard's manifest records. No callbacks reach the caller's state, so any
executor can run it: a loop in this process, a thread pool, or a task on another machine that
sees the same files (execute/ray.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from ..errors import ExpoStreamError
from ..format.files import InputFile
from ..format.manifest import ShardRecord, digest
from ..format.writer import ShardFile
from ..plan.planner import Plan, ShardJob
from .executor import DEFAULT_CHUNK_ELEMENTS, DEFAULT_THREADS, Chunk, Written, run_plan


@dataclass(frozen=True)
class ShardTask:
    """Everything needed to compute shard ``index`` of ``plan`` into ``staging``.

    Args:
        plan: the plan, built once on the driver (a task never re-reads headers or re-decides α).
        index: the shard's index in ``plan.shards``.
        staging: the staging directory (absolute, on storage the task's machine sees).
        subdirs: one output subdirectory of ``staging`` per schedule (``"."`` for a single one).
        backend: a resolved kernel backend name.
        threads: worker threads inside the task.
        chunk_elements: elements per chunk (bounds memory; never changes a bit).
        upload_to: a Hub repo: an executor whose tasks see no shared storage computes the shard
            into a directory of its own and pre-uploads it there (the driver commits).
    """

    plan: Plan
    index: int
    staging: Path
    subdirs: tuple[str, ...]
    backend: str
    threads: int = DEFAULT_THREADS
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    upload_to: str | None = None

    @property
    def shard(self) -> ShardJob:
        return self.plan.shards[self.index]

    def paths(self) -> list[Path]:
        """The shard's file in each output subdirectory."""
        return [self.staging / sub / self.shard.filename for sub in self.subdirs]


def compute_shard(task: ShardTask, progress: Callable[[int], None] | None = None
                  ) -> tuple[dict, ...]:
    """Compute one output shard and return its manifest records, one per subdirectory.

    The shard's files are created (sized up front), written chunk by chunk, and synced before
    this returns; each record (``ShardRecord.to_json()``) lists the digest of every byte range
    written, header included, so the caller can write the manifest that makes the shard count
    as complete. Memory is bounded as in :func:`~.executor.run_plan`.

    Args:
        task: the shard to compute.
        progress: called in the calling thread with output bytes as chunks finish.

    Returns:
        One record (a JSON-ready dict: ``size``, ``ranges``) per entry of ``task.subdirs``.

    Raises:
        OutputError: a shard file cannot be created, written or synced.
        FormatError: an input is shorter than its header says.

    Example:
        >>> records = compute_shard(ShardTask(plan, 0, staging, (".",), "numpy"))  # doctest: +SKIP
    """
    shard = task.shard
    files: list[dict[int, ShardFile]] = []
    records: list[ShardRecord] = []
    try:
        for path in task.paths():
            files.append({shard.index: ShardFile(path, shard.header, shard.file_bytes)})
            record = ShardRecord(shard.file_bytes)
            record.ranges.append((0, len(shard.header), digest(shard.header)))
            records.append(record)

        def chunk_done(chunk: Chunk, written: list[Written]) -> None:
            for record, w in zip(records, written):
                record.ranges.append((w.offset, w.length, w.digest))
            if progress is not None:
                progress(sum(w.length for w in written))

        run_plan(task.plan, files, backend=task.backend, threads=task.threads,
                 chunk_elements=task.chunk_elements, shards=[shard.index], on_chunk=chunk_done)
        while files:  # sync each file; a failure closes the rest below
            files[0].pop(shard.index).close()
            files.pop(0)
    finally:
        for f in files:
            for opened in f.values():
                try:
                    opened.close()
                except ExpoStreamError:
                    pass  # the error being raised already says what went wrong
    return tuple(r.to_json() for r in records)


class Executor(Protocol):
    """Runs shard tasks somewhere and hands each one's records back to the driver.

    ``run`` calls ``on_shard_done(index, records)`` in the calling thread as each shard is
    complete and synced (in any order), and ``progress(bytes)`` as output bytes are written
    (per chunk or per shard, as the executor can). It raises the first task's error as the
    :class:`~expo_stream.errors.ExpoStreamError` (or ``OSError``) the task raised, after stopping
    the other tasks; on ``KeyboardInterrupt`` it stops them and re-raises. Shards finished
    before an error or interrupt have been handed to ``on_shard_done``, so a rerun resumes.
    """

    def run(self, tasks: Sequence[ShardTask],
            on_shard_done: Callable[[int, tuple[dict, ...]], None],
            progress: Callable[[int], None] | None = None) -> None: ...

    def check_inputs(self, files: Sequence[InputFile]) -> None:
        """Check every streamed input's digest before the output is published (raises)."""

    def verified(self, file: InputFile) -> bool:
        """Whether ``file``'s digest has been checked (always, for a local file)."""
