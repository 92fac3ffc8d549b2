"""Running a plan: chunked, multi-threaded, bounded in memory.

The executor alone owns threads, buffers and progress. Each tensor streams through in chunks of
at most ``chunk_elements``; a chunk reads both inputs' bytes with one positional read each into
buffers its thread reuses (sources/local.py), runs the kernel once per schedule into a reused
output buffer and ``pwrite``s it where the plan placed it. The next chunk is prefetched and
read pages are released, so reading, computing and writing overlap across the worker threads
while resident memory stays at three buffers per thread, whatever the model or tensor size.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..errors import ExpoStreamError, FormatError
from ..format.dtypes import NUMPY_DTYPES
from ..format.files import InputFile
from ..format.manifest import digest
from ..format.safetensors import TensorInfo
from ..format.writer import ShardFile
from ..kernels import apply, load_backend
from ..plan.planner import Plan, ShardJob, TensorJob
from ..sources import open_input

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ELEMENTS = 2 * 2**20  # 4 MiB of BF16 per buffer: 12-24 MiB per thread
DEFAULT_THREADS = (os.cpu_count() or 1) + 1  # one more than cores: one may wait on the disk


@dataclass(frozen=True)
class Written:
    """One chunk as written to one output file: byte range and XXH3-128 digest."""

    offset: int
    length: int
    digest: str


@dataclass(frozen=True)
class Chunk:
    """Elements ``[start, stop)`` of one tensor job of one shard: the unit of work."""

    shard: ShardJob
    job: TensorJob
    start: int
    stop: int


def chunks(plan: Plan, chunk_elements: int, shards: list[int] | None = None) -> Iterator[Chunk]:
    """Every chunk of the plan (or of the listed shard indices), in on-disk order."""
    for shard in plan.shards:
        if shards is not None and shard.index not in shards:
            continue
        for job in shard.tensors:
            n = job.numel
            for start in range(0, max(n, 1), chunk_elements):
                yield Chunk(shard, job, start, min(start + chunk_elements, n))


class _Inputs:
    """One shared reader per input file, and each worker thread's reused buffers."""

    def __init__(self):
        self._files: dict[InputFile, object] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def get(self, file: InputFile):
        with self._lock:
            f = self._files.get(file)
            if f is None:
                f = self._files[file] = open_input(file)
            return f

    def span(self, info: TensorInfo, start: int, stop: int) -> tuple[object, int, int]:
        """The reader and byte range of elements ``[start, stop)`` of a tensor."""
        size = NUMPY_DTYPES[info.dtype].itemsize
        return self.get(info.file), info.start + start * size, (stop - start) * size

    def read(self, info: TensorInfo, start: int, stop: int, slot: str) -> np.ndarray:
        """Elements ``[start, stop)`` of a tensor, in this thread's buffer ``slot``."""
        f, offset, length = self.span(info, start, stop)
        buffer = self.buffer(slot, stop - start, NUMPY_DTYPES[info.dtype])
        try:
            f.read_into(offset, buffer)
        except FormatError as exc:  # the reader knows the file; the message needs the tensor
            raise FormatError(f"{exc} (reading tensor `{info.name}`)") from None
        f.release(offset, length)
        return buffer

    def buffer(self, slot: str, n: int, dtype: np.dtype) -> np.ndarray:
        """This thread's buffer ``slot`` as ``n`` elements of ``dtype`` (grown, never shrunk)."""
        pool = self._local.__dict__.setdefault("pool", {})
        raw = pool.get(slot)
        if raw is None or raw.nbytes < n * dtype.itemsize:
            raw = pool[slot] = np.empty(n * dtype.itemsize, np.uint8)
        return raw[:n * dtype.itemsize].view(dtype)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def run_plan(
    plan: Plan,
    outputs: list[dict[int, ShardFile]],
    *,
    backend: str,
    threads: int = DEFAULT_THREADS,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    shards: list[int] | None = None,
    on_chunk: Callable[[Chunk, list[Written]], None] | None = None,
) -> None:
    """Compute every chunk of ``plan`` into the open shard files.

    Args:
        plan: the plan.
        outputs: for each schedule of the plan, shard index -> open :class:`ShardFile`.
        backend: a backend name (``native``, ``numba``, ``numpy``), already resolved.
        threads: worker threads; the kernels release the GIL.
        chunk_elements: elements per chunk (memory bound, not a result: bits never depend on it).
        shards: only these shard indices (default: all).
        on_chunk: called in the calling thread as each chunk is on disk, with what was written
            to each output (``Written(offset, length, digest)``, one per schedule).
    """
    kernel = load_backend(backend)
    inputs = _Inputs()

    def work(chunk: Chunk, ahead: Chunk | None) -> list[Written]:
        job = chunk.job
        if ahead is not None:
            for info in (ahead.job.dpo, ahead.job.sft):
                if info is not None:
                    inputs.get(info.file).prefetch(*inputs.span(info, ahead.start, ahead.stop)[1:])
        dpo = inputs.read(job.dpo, chunk.start, chunk.stop, "dpo")
        out_dtype = NUMPY_DTYPES[job.dtype]
        base = len(chunk.shard.header) + job.offset + chunk.start * out_dtype.itemsize
        written = []
        if job.sft is None:
            raw = dpo.view(np.uint8)
            check = digest(raw)
            for files in outputs:
                files[chunk.shard.index].pwrite(raw, base)
                written.append(Written(base, raw.nbytes, check))
            return written
        sft = inputs.read(job.sft, chunk.start, chunk.stop, "sft")
        buffer = inputs.buffer("out", chunk.stop - chunk.start, out_dtype)
        for alpha, files in zip(job.alphas, outputs):
            apply(kernel, dpo, sft, alpha, buffer)
            raw = buffer.view(np.uint8)
            files[chunk.shard.index].pwrite(raw, base)
            written.append(Written(base, raw.nbytes, digest(raw)))
        return written

    pending: deque[Future] = deque()
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="expo") as pool:
            todo = chunks(plan, chunk_elements, shards)
            current = next(todo, None)
            while current is not None:
                ahead = next(todo, None)
                future = pool.submit(work, current, ahead)
                future.chunk = current
                pending.append(future)
                current = ahead
                if len(pending) >= 2 * threads:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    _collect(pending, done, on_chunk)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                _collect(pending, done, on_chunk)
    finally:
        for future in pending:
            future.cancel()
        inputs.close()


def _collect(pending: deque, done: set, on_chunk) -> None:
    for future in list(done):
        pending.remove(future)
        try:
            written = future.result()  # re-raises a worker's error here
        except (ExpoStreamError, OSError):
            raise  # already one line (OSError: the caller names the output file)
        except Exception as exc:
            # A failure the engine did not foresee: still one line, naming where it happened.
            c = future.chunk
            raise ExpoStreamError(
                f"{c.shard.filename}: tensor `{c.job.name}`, elements {c.start}-{c.stop}: "
                f"{type(exc).__name__}: {exc} (an expo-stream bug: please report it; "
                "--debug shows the traceback)") from exc
        if on_chunk is not None:
            on_chunk(future.chunk, written)
