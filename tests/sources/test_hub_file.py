"""The Hub stream's window: any read order gives the right bytes, each file is hashed once."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")

from expo_stream.errors import FormatError  # noqa: E402
from expo_stream.format.files import InputFile  # noqa: E402
from expo_stream.sources import hub as source  # noqa: E402

from ..hub_server import LocalHub  # noqa: E402


HEADER = 100


@pytest.fixture
def served(tmp_path, monkeypatch):
    # Shaped like a safetensors file: an 8-byte length, a 92-byte header no reader asks for.
    data = (92).to_bytes(8, "little") + np.random.default_rng(0).integers(
        0, 256, 4992, dtype=np.uint8).tobytes()
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "blob.safetensors").write_bytes(data)
    with LocalHub(tmp_path / "hub") as hub:
        sha = hub.add_repo("me/blob", folder)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        file = InputFile("hub", "hf://me/blob/blob.safetensors", len(data), sha,
                         hashlib.sha256(data).hexdigest())
        yield hub, file, data


def read(stream, offset, n):
    out = np.empty(n, np.uint8)
    stream.read_into(offset, out)
    return out.tobytes()


@pytest.mark.parametrize("order", ["forward", "shuffled", "backward"])
def test_any_read_order_gives_the_bytes_and_one_pass_is_hashed(served, order):
    hub, file, data = served
    spans = [(lo, min(lo + 97, len(data))) for lo in range(HEADER, len(data), 97)]
    if order == "shuffled":
        random.Random(1).shuffle(spans)
    elif order == "backward":
        spans.reverse()
    stream = source.HubFile(file, range_bytes=256, in_flight=2, window=3)
    try:
        for lo, hi in spans:
            assert read(stream, lo, hi - lo) == data[lo:hi]
        stream.finish()
        assert stream.verified
    finally:
        stream.shutdown()
    whole = [q for q in hub.requests(name="blob.safetensors") if q.sent == 256]
    # The stream fetched each 256-byte range once; reads behind its window came on their own.
    assert len(whole) <= -(-len(data) // 256) + 1
    if order == "forward":
        assert len(hub.requests(name="blob.safetensors")) == -(-len(data) // 256)


def test_a_corrupted_byte_fails_the_read_or_the_finish(served):
    hub, file, data = served
    hub.corrupt("me/blob", "blob.safetensors", 4000)
    stream = source.HubFile(file, range_bytes=256, in_flight=2, window=3)
    try:
        with pytest.raises(FormatError, match="sha256"):
            for lo in range(HEADER, len(data), 500):
                read(stream, lo, min(500, len(data) - lo))
            stream.finish()
    finally:
        stream.shutdown()


def test_a_file_read_through_holds_no_buffers(served):
    _, file, data = served
    stream = source.HubFile(file, range_bytes=256, in_flight=2, window=3)
    try:
        assert read(stream, HEADER, len(data) - HEADER) == data[HEADER:]
        stream.finish()
        assert not stream._ready and not stream._free
    finally:
        stream.shutdown()


def test_a_stream_from_an_offset_fetches_nothing_before_it(served):
    hub, file, data = served
    stream = source.HubFile(file, range_bytes=256, in_flight=2, window=3, start=3000)
    try:
        assert read(stream, 3000, 1500) == data[3000:4500]
        assert read(stream, 2900, 150) == data[2900:3050]  # behind its start: a read of its own
    finally:
        stream.shutdown()
    ranges = [q.range for q in hub.requests(name="blob.safetensors")]
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in ranges)
    # The fetchers run at once, in any order; none asks for a byte before 3000 but the one read.
    assert "bytes=3000-3255" in ranges and "bytes=2900-2999" in ranges
    assert starts[0] == 2900 and starts[1] == 3000
    unhashed = source.HubFile(file, start=3000)
    try:
        with pytest.raises(ValueError):  # it saw no byte before 3000: it cannot check the digest
            unhashed.finish()
    finally:
        unhashed.shutdown()
