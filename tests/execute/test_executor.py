"""run_plan (expo_stream/execute/executor.py): chunking, threads, zero-size tensors, on_chunk,
errors. Bits never depend on chunk size or thread count (docs/arithmetic.md)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from expo_stream.errors import ExpoStreamError, FormatError
from expo_stream.execute import executor
from expo_stream.execute.executor import chunks, run_plan
from expo_stream.execute.merge import make_options, plan_merge
from expo_stream.format.manifest import digest
from expo_stream.format.writer import ShardFile
from expo_stream.kernels import extrapolate

from ..helpers import DT, _read, tiny_pair

ZERO = {"zero.a": (np.zeros((0,), np.float32), np.zeros((0,), np.float32)),
        "zero.b": (np.zeros((3, 0), DT["BF16"]), np.zeros((3, 0), DT["BF16"]))}


def make_plan(tmp_path, alpha="0.5", shard="300B", extra=None, dtype=None):
    sft, dpo, s, d = tiny_pair(tmp_path / "in", extra=extra)
    plan = plan_merge(make_options(sft, dpo, alpha=alpha, max_shard_size=shard, dtype=dtype))
    return plan, s, d


def execute(plan, out, **kwargs):
    """Run the plan into ``out`` (one directory per schedule); returns each file's bytes."""
    outputs = []
    for k in range(len(plan.schedules)):
        (out / str(k)).mkdir(parents=True)
        outputs.append({s.index: ShardFile(out / str(k) / s.filename, s.header, s.file_bytes)
                        for s in plan.shards})
    try:
        run_plan(plan, outputs, backend=kwargs.pop("backend", "numpy"), **kwargs)
    finally:
        for files in outputs:
            for f in files.values():
                f.close()
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


def test_results_do_not_depend_on_chunk_size_or_threads(tmp_path):
    plan, _, _ = make_plan(tmp_path, alpha="0.5,3", extra=ZERO)
    reference = None
    for i, (chunk, threads) in enumerate([(2**21, 1), (1, 1), (7, 3), (64, 2), (5, 8)]):
        got = execute(plan, tmp_path / f"out{i}", chunk_elements=chunk, threads=threads)
        reference = reference or got
        assert got == reference, (chunk, threads)


def test_output_is_the_kernel_applied_to_each_tensor(tmp_path):
    plan, s, d = make_plan(tmp_path, alpha="0.5", dtype="fp32")
    execute(plan, tmp_path / "out", chunk_elements=5, threads=2)
    merged = {}
    for shard in plan.shards:
        merged.update(_read(tmp_path / "out" / "0" / shard.filename))
    assert set(merged) == set(d)
    for name in d:
        want = extrapolate(d[name], s[name], 0.5, dtype="fp32", backend="numpy")
        assert merged[name].tobytes() == want.tobytes(), name


def test_a_chunk_boundary_inside_a_tensor(tmp_path):
    plan, _, _ = make_plan(tmp_path)
    job = next(t for t in plan.tensors if t.numel == 96)  # an (12, 8) projection
    spans = [(c.start, c.stop) for c in chunks(plan, 40) if c.job is job]
    assert spans == [(0, 40), (40, 80), (80, 96)]
    every = list(chunks(plan, 40))
    assert sum(c.stop - c.start for c in every) == sum(t.numel for t in plan.tensors)
    only_first = {c.shard.index for c in chunks(plan, 40, shards=[1])}
    assert only_first == {1}


def test_zero_size_tensors_get_one_empty_chunk_and_an_empty_entry(tmp_path):
    plan, _, _ = make_plan(tmp_path, extra=ZERO)
    empty = [c for c in chunks(plan, 16) if c.job.name.startswith("zero.")]
    assert [(c.job.name, c.start, c.stop) for c in empty] == [("zero.a", 0, 0), ("zero.b", 0, 0)]
    execute(plan, tmp_path / "out", chunk_elements=16, threads=2)
    merged = {}
    for shard in plan.shards:
        merged.update(_read(tmp_path / "out" / "0" / shard.filename))
    assert merged["zero.a"].shape == (0,) and merged["zero.b"].shape == (3, 0)


@pytest.mark.parametrize("backend", ["numpy", "numba", "native"])
def test_zero_size_tensors_with_every_backend(tmp_path, backend):
    from expo_stream.errors import BackendUnavailableError
    from expo_stream.kernels import load_backend

    try:
        load_backend(backend)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    plan, _, _ = make_plan(tmp_path, extra=ZERO)
    assert execute(plan, tmp_path / "out", chunk_elements=16, backend=backend)


def test_on_chunk_accounts_for_every_byte_in_the_calling_thread(tmp_path):
    plan, _, _ = make_plan(tmp_path, alpha="0.5,2", extra=ZERO)
    seen, threads = [], set()

    def on_chunk(chunk, written):
        threads.add(threading.current_thread())
        seen.append((chunk, written))

    files = execute(plan, tmp_path / "out", chunk_elements=10, threads=3, on_chunk=on_chunk)
    assert threads == {threading.current_thread()}
    assert len(seen) == len(list(chunks(plan, 10)))
    for k in range(2):
        for shard in plan.shards:
            data = files[f"{k}/{shard.filename}"]
            ranges = sorted((w[k].offset, w[k].length, w[k].digest)
                            for c, w in seen if c.shard is shard)
            position = len(shard.header)
            for offset, length, check in ranges:
                assert offset == position  # contiguous: no gap, no overlap
                assert digest(data[offset:offset + length]) == check
                position += length
            assert position == shard.file_bytes
    assert all(len(w) == 2 for _, w in seen)


def test_a_kernel_error_is_the_librarys_error_naming_the_tensor(tmp_path, monkeypatch):
    plan, _, _ = make_plan(tmp_path)
    victim = plan.tensors[5].name

    real = executor.apply

    def failing(kernel, dpo, sft, alpha, out):
        if threading.current_thread().name.startswith("expo") and failing.job == victim:
            raise ValueError("kernel failed")
        real(kernel, dpo, sft, alpha, out)

    failing.job = None
    work_read = executor._Inputs.read

    def read(self, info, start, stop, slot):
        failing.job = info.name
        return work_read(self, info, start, stop, slot)

    monkeypatch.setattr(executor, "apply", failing)
    monkeypatch.setattr(executor._Inputs, "read", read)
    with pytest.raises(ExpoStreamError) as info:
        execute(plan, tmp_path / "out", threads=1)
    assert victim in str(info.value)


def test_an_input_that_shrank_is_a_format_error_naming_the_file(tmp_path):
    plan, _, _ = make_plan(tmp_path)
    path = plan.tensors[-1].dpo.file.path
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(FormatError, match=str(path)):
        execute(plan, tmp_path / "out", threads=2)
