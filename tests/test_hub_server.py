"""The local Hub stand-in (tests/hub_server.py) against the real huggingface_hub client: HTTP
Range, paths-info and tree, the bandwidth limit, fault injection, the request records, seeding
with add_repo and pre-upload followed by one commit.

HF_HUB_DISABLE_XET=1 comes from conftest.py (it must precede the import of huggingface_hub); the
endpoint is passed to each client call, so HF_ENDPOINT is not needed in this process.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

import httpx2  # noqa: E402  (huggingface_hub 2.x's HTTP stack)
from huggingface_hub import (CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download,  # noqa: E402
                             snapshot_download)
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402
from huggingface_hub.utils import get_session  # noqa: E402

from .hub_server import TOKEN, LocalHub  # noqa: E402

SIZE = 1_000_003  # an odd size, so ranges at the end are not aligned


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def seeded(tmp_path, data):
    """A hub holding org/m: model.safetensors (LFS, SIZE bytes), config.json, sub/extra.bin."""
    folder = tmp_path / "seed"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "extra.bin").write_bytes(data[:5000])
    with LocalHub(tmp_path / "hub") as hub:
        sha = hub.add_repo("org/m", folder)
        yield hub, sha


def url(hub, name, repo="org/m", revision="main"):
    return f"{hub.endpoint}/{repo}/resolve/{revision}/{name}"


# -- Range -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,start,end", [
    ("bytes=10-19", 10, 20),
    ("bytes=999990-", 999_990, SIZE),
    ("bytes=-7", SIZE - 7, SIZE),
    ("bytes=1000000-2000000", 1_000_000, SIZE),  # the end is clipped to the file
    ("bytes=0-0", 0, 1),
])
def test_range_answers_206_with_exactly_those_bytes(seeded, data, spec, start, end):
    hub, sha = seeded
    r = get_session().get(url(hub, "model.safetensors"), headers={"Range": spec})
    assert r.status_code == 206
    assert r.content == data[start:end]
    assert r.headers["Content-Length"] == str(end - start)
    assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
    [rec] = hub.requests("model.safetensors")
    assert (rec.method, rec.range, rec.status, rec.sent, rec.dropped) == ("GET", spec, 206, end - start, False)


def test_no_range_unsatisfiable_range_and_head(seeded, data):
    hub, sha = seeded
    session = get_session()
    r = session.get(url(hub, "model.safetensors"))
    assert r.status_code == 200 and r.content == data and "Content-Range" not in r.headers
    for spec in (f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}"):
        r = session.get(url(hub, "model.safetensors"), headers={"Range": spec})
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{SIZE}"
    r = session.head(url(hub, "model.safetensors"))
    oid = hashlib.sha256(data).hexdigest()
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Length"] == str(SIZE)
    assert r.headers["X-Linked-Size"] == str(SIZE)
    assert r.headers["X-Linked-Etag"] == r.headers["ETag"] == f'"{oid}"'
    assert r.headers["X-Repo-Commit"] == sha
    # A small (non-LFS) file is ranged too, and its HEAD has no X-Linked-* headers.
    r = session.get(url(hub, "config.json"), headers={"Range": "bytes=1-4"})
    assert r.status_code == 206 and r.content == b'"a":'
    r = session.head(url(hub, "config.json"))
    assert r.headers["Accept-Ranges"] == "bytes" and "X-Linked-Etag" not in r.headers
    records = hub.requests("model.safetensors")
    assert [(x.method, x.status, x.range) for x in records] == [
        ("GET", 200, None), ("GET", 416, f"bytes={SIZE}-"), ("GET", 416, f"bytes={SIZE + 5}-{SIZE + 9}"),
        ("HEAD", 200, None)]
    assert records[0].sent == SIZE and records[3].sent == 0


def test_hf_file_system_info_and_seek_read_use_ranges(seeded, data):
    hub, _ = seeded
    fs = HfFileSystem(endpoint=hub.endpoint, token=TOKEN, skip_instance_cache=True)
    info = fs.info("org/m/model.safetensors")
    assert info["size"] == SIZE and info["type"] == "file"
    assert info["lfs"].sha256 == hashlib.sha256(data).hexdigest() and info["lfs"].size == SIZE
    assert fs.info("org/m/sub/extra.bin")["size"] == 5000
    assert fs.info("org/m/sub")["type"] == "directory"
    assert fs.ls("org/m", detail=False) == ["org/m/config.json", "org/m/model.safetensors", "org/m/sub"]
    # info() lists the parent folder with the tree endpoint; refresh=True asks paths-info.
    assert any("/tree/main" in line for line in hub.state.log)
    fs.info("org/m/model.safetensors", refresh=True)
    assert any("/paths-info/main" in line for line in hub.state.log)
    with pytest.raises(FileNotFoundError):
        fs.info("org/m/nothing.bin")
    with fs.open("org/m/model.safetensors", "rb", block_size=65536) as f:
        f.seek(700_000)
        assert f.read(1000) == data[700_000:701_000]
        f.seek(SIZE - 10)
        assert f.read() == data[-10:]
    gets = hub.requests("model.safetensors", method="GET")
    assert gets and all(r.range and r.status == 206 for r in gets)
    assert sum(r.sent for r in gets) <= 2 * 65536 + 1000  # read ahead one block, never the file
    assert any(r.range.startswith("bytes=700000-") for r in gets)


def test_get_paths_info(seeded, data):
    hub, sha = seeded
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    infos = api.get_paths_info("org/m", ["model.safetensors", "config.json", "sub", "missing"], revision=sha)
    by_path = {i.path: i for i in infos}
    assert set(by_path) == {"model.safetensors", "config.json", "sub"}  # a missing path is left out
    model = by_path["model.safetensors"]
    assert model.size == SIZE and model.lfs.sha256 == hashlib.sha256(data).hexdigest()
    assert model.lfs.size == SIZE and model.lfs.pointer_size == 134
    assert by_path["config.json"].lfs is None and by_path["config.json"].size == 8
    assert type(by_path["sub"]).__name__ == "RepoFolder"
    [expanded] = api.get_paths_info("org/m", "config.json", expand=True)
    assert expanded.last_commit.oid == sha
    # The body is form-encoded, paths repeated, as HfApi sends it.
    assert [r.path for r in hub.requests(kind="api", method="POST")] == [f"/api/models/org/m/paths-info/{sha}",
                                                                          "/api/models/org/m/paths-info/main"]


# -- faults ----------------------------------------------------------------------------------------
def test_dropped_download_resumes_from_its_offset(tmp_path):
    """hf_hub_download resumes with a Range from what it has written; it writes in 10 MiB pieces
    (DOWNLOAD_CHUNK_SIZE), so a drop 10.6 MB in resumes from 10 MiB (a drop before 10 MiB restarts
    the file with a plain GET)."""
    big = os.urandom(12_000_000)
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "big.safetensors").write_bytes(big)
    with LocalHub(tmp_path / "hub") as hub:
        hub.add_repo("org/big", tmp_path / "seed")
        hub.drop_after("big.safetensors", 10_600_000)
        path = hf_hub_download("org/big", "big.safetensors", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == big
        gets = hub.requests("big.safetensors", method="GET")
        resumed = 10 * 2**20
        assert [(r.range, r.status, r.sent, r.dropped, r.fault) for r in gets] == [
            (None, 200, 10_600_000, True, "drop"),
            (f"bytes={resumed}-", 206, len(big) - resumed, False, None)]
        assert hub.traffic()["down"] == 10_600_000 + len(big) - resumed


def test_streamed_file_reopens_at_its_offset_after_a_drop(seeded, data):
    """HfFileSystem's streaming file (block_size=0) retries a broken body once, with
    Range: bytes=<offset of the last completed read>-."""
    hub, _ = seeded
    hub.drop_after("model.safetensors", 300_000)
    fs = HfFileSystem(endpoint=hub.endpoint, token=TOKEN, skip_instance_cache=True)
    with fs.open("org/m/model.safetensors", "rb", block_size=0) as f:
        got = b"".join(iter(lambda: f.read(100_000), b""))
    assert got == data
    assert [(r.range, r.sent, r.dropped) for r in hub.requests("model.safetensors", method="GET")] == [
        (None, 300_000, True), ("bytes=300000-", SIZE - 300_000, False)]


def test_drop_with_reset_and_times(seeded, data):
    hub, _ = seeded
    hub.drop_after("safetensors", 1000, times=2, reset=True)
    session = get_session()
    for _ in range(2):
        with pytest.raises(httpx2.TransportError):
            session.get(url(hub, "model.safetensors"), headers={"Range": "bytes=10-"})
    assert session.get(url(hub, "model.safetensors")).content == data  # the rule is spent
    assert [(r.sent, r.dropped) for r in hub.requests("model.safetensors")] == [
        (1000, True), (1000, True), (SIZE, False)]


def test_fail_matches_paths_and_counts_down(seeded):
    hub, _ = seeded
    hub.fail("/resolve/main/config", status=502, times=2)
    session = get_session()
    assert [session.get(url(hub, "config.json")).status_code for _ in range(3)] == [502, 502, 200]
    assert session.get(url(hub, "model.safetensors"), headers={"Range": "bytes=0-1"}).status_code == 206
    hub.fail("model.safetensors", status=503, method="GET")
    assert session.head(url(hub, "model.safetensors")).status_code == 200  # not a GET: untouched
    assert session.get(url(hub, "model.safetensors")).status_code == 503
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    hub.fail("paths-info", status=500)
    with pytest.raises(HfHubHTTPError):
        api.get_paths_info("org/m", ["config.json"])
    assert len(api.get_paths_info("org/m", ["config.json"])) == 1
    assert [r.fault for r in hub.requests("config.json")] == ["fail", "fail", None]


def test_down_answers_503_or_closes(seeded):
    hub, _ = seeded
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    hub.down(True)
    r = get_session().get(url(hub, "config.json"))
    assert r.status_code == 503 and "down" in r.headers["X-Error-Message"]
    hub.down(True, close=True)
    with pytest.raises(httpx2.TransportError):
        get_session().post(f"{hub.endpoint}/api/models/org/m/paths-info/main", data={"paths": ["a"]})
    hub.down(False)
    assert api.repo_info("org/m").sha == seeded[1]
    assert [r.fault for r in hub.requests(kind=None)] == ["down", "down", None]


def test_stall_pauses_mid_body(seeded, data):
    hub, _ = seeded
    hub.stall("model.safetensors", 4096, seconds=1.0)
    session = get_session()
    started = time.monotonic()
    with pytest.raises(httpx2.ReadTimeout):
        with session.stream("GET", url(hub, "model.safetensors"), timeout=0.3) as r:
            received = 0
            for piece in r.iter_bytes():
                received += len(piece)
    assert received == 4096 and time.monotonic() - started < 0.9
    hub.stall("model.safetensors", 10, seconds=0.4)
    started = time.monotonic()
    r = session.get(url(hub, "model.safetensors"), headers={"Range": "bytes=100-199"}, timeout=5)
    assert r.content == data[100:200] and time.monotonic() - started >= 0.4
    assert [r.fault for r in hub.requests("model.safetensors")] == ["stall", "stall"]


def test_corrupt_flips_one_byte_but_not_the_advertised_hash(seeded, data):
    hub, _ = seeded
    hub.corrupt("org/m", "model.safetensors", 123_456)
    session = get_session()
    served = session.get(url(hub, "model.safetensors")).content
    assert len(served) == SIZE and served[123_456] == data[123_456] ^ 1
    assert served[:123_456] == data[:123_456] and served[123_457:] == data[123_457:]
    assert session.get(url(hub, "model.safetensors"), headers={"Range": "bytes=123450-123460"}).content[6] \
        == data[123_456] ^ 1
    assert session.get(url(hub, "model.safetensors"), headers={"Range": "bytes=0-99"}).content == data[:100]
    [info] = HfApi(endpoint=hub.endpoint).get_paths_info("org/m", ["model.safetensors"])
    assert info.lfs.sha256 == hashlib.sha256(data).hexdigest() != hashlib.sha256(served).hexdigest()
    assert session.head(url(hub, "model.safetensors")).headers["X-Linked-Etag"].strip('"') == info.lfs.sha256
    hub.clear_faults()
    assert session.get(url(hub, "model.safetensors")).content == data


# -- bandwidth -------------------------------------------------------------------------------------
def test_bandwidth_is_shared_by_concurrent_downloads(seeded, data):
    hub, _ = seeded
    hub.bandwidth = 2e6  # bytes/s for everyone together

    def fetch(spec, out):
        out.append(get_session().get(url(hub, "model.safetensors"), headers={"Range": spec}).content)

    results: list[bytes] = []
    started = time.monotonic()
    threads = [threading.Thread(target=fetch, args=(s, results)) for s in ("bytes=0-499999", "bytes=500000-999999")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    assert sorted(results) == sorted([data[:500_000], data[500_000:1_000_000]])
    assert 0.45 <= took < 1.5  # 1 MB at 2 MB/s, less one burst of 40 kB
    hub.bandwidth = None
    started = time.monotonic()
    assert get_session().get(url(hub, "model.safetensors")).content == data
    assert time.monotonic() - started < 0.3


def test_upload_bandwidth(tmp_path):
    payload = os.urandom(600_000)
    with LocalHub(tmp_path / "hub", upload_bandwidth=1e6) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo("me/up")
        started = time.monotonic()
        api.upload_file(path_or_fileobj=payload, path_in_repo="w.bin", repo_id="me/up")
        assert time.monotonic() - started >= 0.5
        [put] = hub.requests(kind="upload")
        assert put.received == len(payload) and hub.traffic()["up"] == len(payload)


# -- uploads ---------------------------------------------------------------------------------------
def test_preupload_then_one_commit(tmp_path):
    """Shard by shard: each LFS file pre-uploaded (one in multipart parts) and deleted locally, then
    one create_commit with the same operations publishes everything without uploading again."""
    files = {"model-00001-of-00002.safetensors": os.urandom(250_000),
             "model-00002-of-00002.safetensors": os.urandom(40_000),
             "model.safetensors.index.json": b'{"weight_map": {}}'}
    folder = tmp_path / "out"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    with LocalHub(tmp_path / "hub", multipart_threshold=100_000, part_size=64_000) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo("me/out")
        ops = [CommitOperationAdd(name, str(folder / name)) for name in files]
        for op in ops[:2]:
            api.preupload_lfs_files("me/out", additions=[op])
            (folder / op.path_in_repo).unlink()
        assert hub.manifest("me/out") == {}  # nothing visible before the commit
        puts = hub.requests(kind="upload")
        assert len([p for p in puts if "/part/" in p.path]) == 4  # ceil(250000 / 64000)
        assert len(puts) == 5 and sum(p.received for p in puts) == 290_000
        assert not any((hub.state.parts).iterdir())  # parts removed once complete
        info = api.create_commit("me/out", operations=ops, commit_message="all shards")
        assert len(hub.requests(kind="upload")) == 5  # the commit re-uploaded nothing
        manifest = hub.manifest("me/out")
        assert {k: v["sha256"] for k, v in manifest.items()} == {
            k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
        assert [manifest[name]["lfs"] for name in files] == [True, True, False]
        assert api.repo_info("me/out").sha == info.oid
        local = snapshot_download("me/out", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "dl")
        assert {p.name: p.read_bytes() for p in Path(local).iterdir()} == files
        # A resumed run pre-uploading the same bytes again: the LFS batch answers that the
        # object is there (no actions), so nothing is sent.
        again = CommitOperationAdd("model-00001-of-00002.safetensors", files["model-00001-of-00002.safetensors"])
        api.preupload_lfs_files("me/out", additions=[again])
        assert len(hub.requests(kind="upload")) == 5 and again._is_uploaded
        # Another repo does not get objects it never received: the same bytes go up again.
        api.create_repo("me/other")
        api.preupload_lfs_files("me/other", additions=[CommitOperationAdd("x.safetensors", files[
            "model-00002-of-00002.safetensors"])])
        assert [(r.repo_id, r.received) for r in hub.requests(kind="upload")[5:]] == [("me/other", 40_000)]


def test_lfs_put_streams_chunked_bodies_and_checks_hashes(tmp_path):
    payload = os.urandom(300_000)
    oid = hashlib.sha256(payload).hexdigest()
    with LocalHub(tmp_path / "hub") as hub:
        session = get_session()

        def pieces():
            for i in range(0, len(payload), 70_000):
                yield payload[i:i + 70_000]

        assert session.put(f"{hub.endpoint}/lfs/{'0' * 64}", content=pieces()).status_code == 400
        assert not hub.blob_path("0" * 64).exists()
        r = session.put(f"{hub.endpoint}/lfs/{oid}", content=pieces())  # Transfer-Encoding: chunked
        assert r.status_code == 200 and hub.blob_path(oid).read_bytes() == payload
        r = session.post(f"{hub.endpoint}/lfs/{oid[::-1]}/complete", json={"oid": oid[::-1], "parts": [
            {"partNumber": 1, "etag": "x"}]})
        assert r.status_code == 400 and "never uploaded" in r.json()["error"]
        assert not list(hub.state.tmp.iterdir())  # no temporary file left behind


# -- seeding ---------------------------------------------------------------------------------------
def test_add_repo_links_blobs_and_serves_the_tree(tmp_path, data):
    folder = tmp_path / "seed"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "sub" / "deeper" / "x.txt").write_text("x")
    (folder / "sub" / "big.bin").write_bytes(data[:3000])
    with LocalHub(tmp_path / "hub") as hub:
        sha = hub.add_repo("org/p", folder, private=True)
        oid = hashlib.sha256(data).hexdigest()
        assert os.stat(hub.blob_path(oid)).st_ino == os.stat(folder / "model.safetensors").st_ino
        hub.add_repo("org/copy", folder, link=False)
        assert hub.manifest("org/copy") == hub.manifest("org/p")
        assert hub.manifest("org/p")["sub/big.bin"]["lfs"] and not hub.manifest("org/p")["sub/deeper/x.txt"]["lfs"]
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        assert api.repo_info("org/p").sha == sha
        with pytest.raises(HfHubHTTPError):
            HfApi(endpoint=hub.endpoint, token=False).repo_info("org/p")
        top = [(e.path, type(e).__name__) for e in api.list_repo_tree("org/p")]
        assert top == [("model.safetensors", "RepoFile"), ("sub", "RepoFolder")]
        assert [e.path for e in api.list_repo_tree("org/p", "sub")] == ["sub/big.bin", "sub/deeper"]
        assert [e.path for e in api.list_repo_tree("org/p", recursive=True)] == [
            "model.safetensors", "sub", "sub/big.bin", "sub/deeper", "sub/deeper/x.txt"]
        local = Path(snapshot_download("org/p", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "dl"))
        assert (local / "sub" / "deeper" / "x.txt").read_text() == "x"
        assert (local / "model.safetensors").read_bytes() == data
