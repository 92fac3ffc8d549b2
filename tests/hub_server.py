"""A small local stand-in for the Hugging Face Hub HTTP API, for tests and benchmarks without the
internet.

It implements what the real ``huggingface_hub`` client (2.x, LFS protocol) calls for
``create_repo``, ``preupload``, the LFS batch API (basic and multipart uploads), ``commit``
(NDJSON), ``validate-yaml``, repo info, ``tree`` (recursive or not, ``expand``), ``paths-info``
(form-encoded like ``HfApi.get_paths_info`` sends it, or JSON) and file resolution (GET/HEAD
``/{repo}/resolve/{revision}/{path}``, with HTTP ``Range``). Repos live in memory as commits of
path -> bytes (small files) or (sha256, size) (LFS files, stored on disk under ``root/lfs`` by
sha256). Runs on 127.0.0.1, port 0, in a thread. Xet is not offered, so clients need
``HF_HUB_DISABLE_XET=1`` (set before huggingface_hub is imported).

Scale: LFS blobs are served from disk with seek + chunked writes; LFS PUT bodies and multipart
parts are streamed to disk (parts are concatenated and hashed on ``complete``), so nothing holds a
whole blob in memory. Blobs are stored once, but as on the Hub the LFS batch calls an object
present only for a repo it was uploaded to or committed in (upload URLs carry ``?repo=``), so
pushing bytes another repo holds still uploads them. ``LocalHub.add_repo`` seeds a repo from a
local folder without the client (big files hashed in chunks and hard-linked, or copied, into the
blob store).

Resolution: ``Range: bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` answer 206 with ``Content-Range``;
a range starting at or past the end answers 416 (``Content-Range: bytes */SIZE``); several ranges
in one header are ignored (200, the whole file, as RFC 9110 allows). GET and HEAD send
``Accept-Ranges: bytes``, ``ETag`` (an LFS file's sha256; a small file's sha1), ``X-Repo-Commit``
and, for LFS files, ``X-Linked-Etag`` / ``X-Linked-Size``.

Bandwidth: ``LocalHub(root, bandwidth=200e6)`` limits the file bodies of all resolve GETs together
to 200 MB/s (one token bucket; ``upload_bandwidth`` does the same for LFS PUT bodies, separately,
as on a full-duplex link). ``hub.bandwidth = x`` changes it while serving; None is unlimited.

Faults (thread-safe; each rule is consumed when it fires, ``times=None`` keeps it forever):

- ``hub.fail(match, status=503, times=1, method=None)``: the next ``times`` requests (any method,
  or only ``method``, e.g. "GET") whose URL path (percent-decoded, without the query) contains
  ``match`` answer ``status`` with a JSON error and ``Connection: close``, before any route runs.
- ``hub.down(True)``: every request answers 503 ("the Hub is down") until ``hub.down(False)``;
  ``hub.down(True, close=True)`` closes each connection instead, without any response.
- ``hub.drop_after(name, nbytes, times=1, reset=False)``: the next ``times`` resolve GETs of a
  file whose repo path ends with ``name`` send ``nbytes`` body bytes (counted from the start of
  that response's body, whatever its Range) and then close the connection (FIN: the client reads
  a short body, httpx raises ``RemoteProtocolError``; ``reset=True`` sends a TCP RST instead,
  ``ReadError``). A GET whose body is no longer than ``nbytes`` still consumes the rule.
- ``hub.stall(name, after_bytes, seconds, times=1)``: the next ``times`` resolve GETs of ``name``
  send ``after_bytes`` body bytes, then sleep ``seconds`` before sending the rest.
- ``hub.corrupt(repo_id, name, offset)``: from now on every GET of that file (any revision)
  serves the byte at file offset ``offset`` XOR 0x01; sizes, ETag and the LFS oid stay the
  original's, so only a client that hashes the bytes notices.
- ``hub.clear_faults()`` removes every rule, corruption and the down state.

Logs: ``hub.state.log`` keeps one ``"METHOD /path?query"`` string per request (as before).
``hub.requests(name=None, kind="file", method=None)`` returns snapshots of structured
``Request`` records: ``kind`` is "file" (resolve GET/HEAD), "upload" (LFS PUT bodies, whole or
parts) or "api" (the rest); each has method, path, repo_id, name (the repo path, or the LFS oid
for uploads), range (the Range header as given), status, sent / received (body bytes actually
written / read), dropped (the server cut the connection short), fault (which rule fired), and
start / end times. A record is appended when the request arrives, so records are in arrival
order even when the client retries at once. ``hub.traffic()`` sums file bytes sent and upload
bytes received.

Seeding and checking: ``hub.add_repo(repo_id, folder, private=False) -> commit sha``;
``hub.manifest(repo_id, revision="main") -> {path: {"sha256", "size", "lfs"}}``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote

MULTIPART_THRESHOLD = 1_000_000  # objects above this size are offered multipart uploads
PART_SIZE = 400_000
LFS_MIN_SIZE = 2000  # files above this size (and every .safetensors) are stored as LFS
TOKEN = "hf_test_token"
CHUNK = 256 * 1024  # bytes per socket write when serving a file body
COPY_CHUNK = 8 * 2**20  # bytes per read when hashing or copying blobs


def is_lfs(path: str, size: int) -> bool:
    """The preupload rule: which files the server asks to go through LFS."""
    return size > LFS_MIN_SIZE or path.endswith(".safetensors")


class TokenBucket:
    """Shared rate limit: ``take(n)`` returns once n bytes fit under ``rate`` bytes/s overall.

    Callers reserve tokens (the balance may go negative) and sleep off their own deficit, so
    concurrent transfers share the rate in arrival order; the burst is about 20 ms of traffic.
    """

    def __init__(self, rate: float):
        self.lock = threading.Lock()
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        with self.lock:
            self.rate = float(rate)
            self.burst = max(self.rate * 0.02, 64 * 1024)
            self.tokens = self.burst
            self.stamp = time.monotonic()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


@dataclasses.dataclass
class Request:
    """One request as the server saw it (see the module docstring)."""

    method: str
    path: str
    kind: str = "api"
    repo_id: str | None = None
    name: str | None = None
    range: str | None = None
    status: int | None = None
    sent: int = 0
    received: int = 0
    dropped: bool = False
    fault: str | None = None
    start: float = 0.0
    end: float | None = None


@dataclasses.dataclass
class Rule:
    kind: str  # "fail", "drop", "stall"
    match: str
    times: int | None
    status: int = 503
    nbytes: int = 0
    seconds: float = 0.0
    reset: bool = False
    method: str | None = None


class Repo:
    def __init__(self, repo_id: str, private: bool):
        self.repo_id = repo_id
        self.private = private
        first = hashlib.sha1(repo_id.encode()).hexdigest()
        self.commits: list[tuple[str, dict[str, bytes | tuple[str, int]]]] = [(first, {})]
        self.titles: dict[str, tuple[str, str]] = {first: ("initial commit", _now())}
        self.refs = {"main": 0}
        self.prs = 0
        # LFS objects this repo may use: uploaded through its batch or committed in it. As on the
        # Hub, an object another repo uploaded is not "already there" for this one.
        self.objects: set[str] = set()

    def head(self, revision: str) -> tuple[str, dict]:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        for sha, files in self.commits:
            if sha == revision:
                return sha, files
        raise KeyError(revision)

    def add_commit(self, parent: str, title: str, files: dict) -> str:
        sha = hashlib.sha1(json.dumps([parent, title, len(self.commits), sorted(files)]).encode()).hexdigest()
        self.commits.append((sha, files))
        self.titles[sha] = (title, _now())
        return sha

    def last_commit(self, upto: str, path: str) -> dict:
        """lastCommit of ``path`` as of commit ``upto``: the latest commit up to it that changed the
        path (the history is taken as the order of commits, branches not told apart)."""
        found = upto
        previous = None
        for sha, files in self.commits:
            content = files.get(path)
            if content is not None and content != previous:
                found = sha
            previous = content
            if sha == upto:
                break
        title, date = self.titles[found]
        return {"id": found, "title": title, "date": date}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubState:
    def __init__(self, root: Path, bandwidth: float | None, upload_bandwidth: float | None,
                 multipart_threshold: int, part_size: int):
        self.root = root
        self.blobs = root / "lfs"
        self.parts = root / "parts"
        self.tmp = root / "tmp"
        for d in (self.blobs, self.parts, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()  # repos, rules, corruptions, records
        self.log: list[str] = []
        self.records: list[Request] = []
        self.rules: list[Rule] = []
        self.corruptions: dict[tuple[str, str], set[int]] = {}
        self.down: str | None = None  # None, "503" or "close"
        self.closing = threading.Event()
        self.download = TokenBucket(bandwidth) if bandwidth else None
        self.upload = TokenBucket(upload_bandwidth) if upload_bandwidth else None
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size

    def take_rule(self, kinds: tuple[str, ...], test) -> Rule | None:
        """The first rule of one of ``kinds`` that ``test(rule)`` accepts, consumed once."""
        with self.lock:
            for rule in self.rules:
                if rule.kind in kinds and test(rule):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self.rules.remove(rule)
                    return rule
        return None


class DroppedConnection(Exception):
    """Raised inside a handler once it has cut the connection on purpose."""


def make_handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean; requests go to state.log
            pass

        # -- helpers ---------------------------------------------------------------------------
        @property
        def base(self) -> str:
            return f"http://{self.headers['Host']}"

        def authed(self) -> bool:
            return self.headers.get("Authorization", "") == f"Bearer {TOKEN}"

        def has_body(self) -> bool:
            return (int(self.headers.get("Content-Length") or 0) > 0
                    or "chunked" in self.headers.get("Transfer-Encoding", "").lower())

        def iter_body(self, bucket: TokenBucket | None = None):
            """The request body in pieces of at most COPY_CHUNK (Content-Length or chunked)."""
            self.body_pending = False
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return
                    while size:
                        piece = self.rfile.read(min(size, COPY_CHUNK))
                        if not piece:
                            raise ConnectionError("request body cut short")
                        size -= len(piece)
                        yield self.counted_in(piece, bucket)
                    self.rfile.readline()
            else:
                remaining = int(self.headers.get("Content-Length") or 0)
                while remaining:
                    piece = self.rfile.read(min(remaining, COPY_CHUNK))
                    if not piece:
                        raise ConnectionError("request body cut short")
                    remaining -= len(piece)
                    yield self.counted_in(piece, bucket)

        def counted_in(self, piece: bytes, bucket: TokenBucket | None) -> bytes:
            if bucket is not None:
                bucket.take(len(piece))
            self.rec.received += len(piece)
            return piece

        def body(self) -> bytes:
            return b"".join(self.iter_body())

        def reply(self, code: int, obj=None, headers: dict | None = None, raw: bytes | None = None,
                  head: bool = False):
            data = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else b"")
            self.rec.status = code
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.body_pending:  # answered without reading the body: this connection is spent
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if not head:
                self.rec.sent += len(data)  # counted first: the client may look before we return
                self.wfile.write(data)

        def error(self, code: int, message: str, head: bool = False, error_code: str | None = None):
            headers = {"X-Error-Message": message}
            if error_code:  # huggingface_hub picks its exception class by this header
                headers["X-Error-Code"] = error_code
            self.reply(code, {"error": message}, headers=headers, head=head)

        def repo(self, repo_id: str, write: bool = False, head: bool = False) -> Repo | None:
            repo = state.repos.get(repo_id)
            if repo is None or (repo.private and not self.authed()) or (write and not self.authed()):
                self.error(401 if repo is not None or write else 404,
                           f"Repository {repo_id} not found or not authorized", head=head)
                return None
            return repo

        # -- dispatch --------------------------------------------------------------------------
        def handle_one(self, method: str) -> None:
            """Log the request, apply down/fail faults, then route it."""
            state.log.append(f"{method} {self.path}")
            self.body_pending = self.has_body()
            path = unquote(self.path.split("?")[0])
            self.rec = Request(method=method, path=path, range=self.headers.get("Range"),
                               start=time.monotonic())
            # Classified before any fault fires, so an injected failure is logged as what it hit.
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
            if m and method in ("GET", "HEAD"):
                self.rec.kind, self.rec.repo_id, self.rec.name = "file", unquote(m.group(1)), unquote(m.group(3))
            m = re.fullmatch(r"/lfs/(\w+)(?:/part/\d+)?", path)
            if m and method == "PUT":
                self.rec.kind, self.rec.name, self.rec.repo_id = "upload", m.group(1), self.lfs_repo()
            with state.lock:
                state.records.append(self.rec)
                down = state.down
            try:
                if down == "close":
                    self.rec.fault = "down"
                    self.cut(reset=False)
                if down == "503":
                    self.rec.fault = "down"
                    return self.error(503, "the Hub is down (LocalHub.down)", head=method == "HEAD")
                rule = state.take_rule(("fail",), lambda r: r.match in path and r.method in (None, method))
                if rule is not None:
                    self.rec.fault = "fail"
                    return self.error(rule.status, f"injected failure ({rule.match})", head=method == "HEAD")
                getattr(self, f"route_{method.lower()}")(path)
            except DroppedConnection:
                pass
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away
            finally:
                self.rec.end = time.monotonic()

        def cut(self, reset: bool) -> None:
            """Close this connection now: FIN after what was written, or RST."""
            self.rec.dropped = True
            self.close_connection = True
            try:
                self.wfile.flush()
                if reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise DroppedConnection

        def do_POST(self):
            self.handle_one("POST")

        def do_PUT(self):
            self.handle_one("PUT")

        def do_GET(self):
            self.handle_one("GET")

        def do_HEAD(self):
            self.handle_one("HEAD")

        def route_post(self, path: str):
            if path == "/api/repos/create":
                return self.create_repo(json.loads(self.body()))
            if path == "/api/validate-yaml":
                self.body()
                return self.reply(200, {})
            raw = self.path.split("?")[0]
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/paths-info/([^/]+)", raw)
            if m:
                return self.paths_info(unquote(m.group(1)), unquote(m.group(2)))
            m = re.fullmatch(r"/api/models/(.+?)/preupload/(.+)", path)
            if m:
                return self.preupload(m.group(1), json.loads(self.body()))
            m = re.fullmatch(r"/api/models/(.+?)/commit/(.+)", path)
            if m:
                return self.commit(m.group(1), m.group(2), self.body())
            m = re.fullmatch(r"/api/models/(.+?)/branch/(.+)", path)
            if m:
                return self.branch(m.group(1), m.group(2))
            m = re.fullmatch(r"/(.+?)\.git/info/lfs/objects/batch", path)
            if m:
                return self.lfs_batch(m.group(1), json.loads(self.body()))
            m = re.fullmatch(r"/lfs/(\w+)/(complete|verify)", path)
            if m:
                return self.lfs_finish(m.group(1), m.group(2), json.loads(self.body()))
            self.error(404, f"no route POST {path}")

        def lfs_repo(self) -> str | None:
            """The repo an LFS upload URL was issued for (its ?repo= query)."""
            return (parse_qs(self.path.partition("?")[2]).get("repo") or [None])[-1]

        def stored(self, oid: str) -> None:
            """Record that the current LFS upload's repo now holds ``oid``."""
            with state.lock:
                repo = state.repos.get(self.lfs_repo() or "")
                if repo is not None:
                    repo.objects.add(oid)

        def route_put(self, path: str):
            m = re.fullmatch(r"/lfs/(\w+)(?:/part/(\d+))?", path)
            if not m:
                return self.error(404, "no route")
            oid, part = m.group(1), m.group(2)
            self.rec.kind, self.rec.name = "upload", oid
            tmp = _temp_file(state)
            try:
                digest = hashlib.sha256() if part is None else hashlib.md5()
                with open(tmp, "wb") as f:
                    for piece in self.iter_body(state.upload):
                        digest.update(piece)
                        f.write(piece)
                if part is None:
                    if digest.hexdigest() != oid:
                        return self.error(400, "sha256 mismatch")
                    os.replace(tmp, state.blobs / oid)
                    self.stored(oid)
                    return self.reply(200, {})
                folder = state.parts / oid
                folder.mkdir(exist_ok=True)
                os.replace(tmp, folder / f"{int(part):05d}")
                self.reply(200, {}, headers={"ETag": f'"{digest.hexdigest()}"'})
            finally:
                tmp.unlink(missing_ok=True)

        def route_get(self, path: str):
            self.get_or_head(head=False)

        def route_head(self, path: str):
            self.get_or_head(head=True)

        def get_or_head(self, head: bool):
            # Match the raw path: a revision like refs/pr/1 arrives percent-encoded.
            raw, _, query = self.path.partition("?")
            params = {k: v[-1] for k, v in parse_qs(query).items()}
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", raw)
            if m:
                return self.tree(unquote(m.group(1)), unquote(m.group(2)),
                                 unquote(m.group(3) or "").strip("/"), _truthy(params.get("recursive")),
                                 _truthy(params.get("expand")), head)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", raw)
            if m:
                return self.info(unquote(m.group(1)), unquote(m.group(2) or "main"), head)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", raw)
            if m:
                return self.resolve(unquote(m.group(1)), unquote(m.group(2)), unquote(m.group(3)), head)
            self.error(404, f"no route GET {unquote(raw)}", head=head)

        # -- API -------------------------------------------------------------------------------
        def create_repo(self, req: dict):
            if not self.authed():
                return self.error(401, "Invalid credentials in Authorization header")
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            with state.lock:
                if repo_id in state.repos:
                    return self.reply(409, {"error": "You already created this model repo",
                                            "url": f"{self.base}/{repo_id}"})
                private = bool(req.get("private")) or req.get("visibility") == "private"
                state.repos[repo_id] = Repo(repo_id, private)
            self.reply(200, {"url": f"{self.base}/{repo_id}", "name": repo_id})

        def branch(self, repo_id: str, name: str):
            self.body()
            repo = self.repo(repo_id, write=True)
            if repo is None:
                return
            with state.lock:
                if name in repo.refs:
                    return self.error(409, f"Reference {name} already exists")
                repo.refs[name] = repo.refs["main"]
            self.reply(200, {})

        def preupload(self, repo_id: str, req: dict):
            if self.repo(repo_id, write=True) is None:
                return
            files = [{"path": f["path"], "shouldIgnore": False,
                      "uploadMode": "lfs" if is_lfs(f["path"], f["size"]) else "regular"}
                     for f in req["files"]]
            self.reply(200, {"files": files})

        def lfs_batch(self, repo_id: str, req: dict):
            repo = self.repo(repo_id, write=True)
            if repo is None:
                return
            where = f"?repo={quote(repo_id, safe='')}"
            objects = []
            multipart = False
            for obj in req["objects"]:
                oid, size = obj["oid"], obj["size"]
                if (state.blobs / oid).exists() and oid in repo.objects:
                    objects.append({"oid": oid, "size": size})  # already there: no action
                    continue
                if size > state.multipart_threshold and "multipart" in req.get("transfers", []):
                    multipart = True
                    n = -(-size // state.part_size)
                    header = {"chunk_size": str(state.part_size)}
                    header.update({f"{i + 1:05d}": f"{self.base}/lfs/{oid}/part/{i + 1}{where}" for i in range(n)})
                    actions = {"upload": {"href": f"{self.base}/lfs/{oid}/complete{where}", "header": header}}
                else:
                    actions = {"upload": {"href": f"{self.base}/lfs/{oid}{where}"}}
                actions["verify"] = {"href": f"{self.base}/lfs/{oid}/verify{where}"}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
            self.reply(200, {"transfer": "multipart" if multipart else "basic", "objects": objects})

        def lfs_finish(self, oid: str, what: str, req: dict):
            if what == "verify":
                repo = state.repos.get(self.lfs_repo() or "")
                if not (state.blobs / oid).exists() or repo is None or oid not in repo.objects:
                    return self.error(404, "object not uploaded")
                return self.reply(200, {})
            folder = state.parts / oid
            numbers = sorted(int(p["partNumber"]) for p in req.get("parts", []))
            missing = [n for n in numbers if not (folder / f"{n:05d}").exists()]
            if not numbers or missing:
                return self.error(400, f"multipart upload {oid}: parts {missing or 'none'} never uploaded")
            tmp = _temp_file(state)
            try:
                digest = hashlib.sha256()
                with open(tmp, "wb") as out:
                    for n in numbers:  # concatenate and hash a piece at a time
                        with open(folder / f"{n:05d}", "rb") as part:
                            while piece := part.read(COPY_CHUNK):
                                digest.update(piece)
                                out.write(piece)
                if digest.hexdigest() != oid:
                    return self.error(400, "multipart upload sha256 mismatch")
                os.replace(tmp, state.blobs / oid)
                self.stored(oid)
                shutil.rmtree(folder, ignore_errors=True)
            finally:
                tmp.unlink(missing_ok=True)
            self.reply(200, {})

        def commit(self, repo_id: str, revision: str, body: bytes):
            repo = self.repo(repo_id, write=True)
            if repo is None:
                return
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            create_pr = "create_pr=1" in self.path
            with state.lock:
                head_sha, files = repo.head(unquote(revision))
                parent = header.get("parentCommit")
                if parent and parent != head_sha:
                    return self.error(412, f"parent commit {parent} is not the head of {revision} ({head_sha})")
                new = dict(files)
                for x in lines:
                    v = x["value"]
                    if x["key"] == "file":
                        new[v["path"]] = base64.b64decode(v["content"])
                    elif x["key"] == "lfsFile":
                        if not (state.blobs / v["oid"]).exists() or v["oid"] not in repo.objects:
                            return self.error(422, f"LFS object {v['oid']} was never uploaded")
                        new[v["path"]] = (v["oid"], v["size"])
                    elif x["key"] == "deletedFile":
                        new.pop(v["path"], None)
                sha = repo.add_commit(head_sha, header.get("summary") or "commit", new)
                result = {"success": True, "commitOid": sha,
                          "commitUrl": f"{self.base}/{repo_id}/commit/{sha}"}
                if create_pr:
                    repo.prs += 1
                    repo.refs[f"refs/pr/{repo.prs}"] = len(repo.commits) - 1
                    result["pullRequestUrl"] = f"{self.base}/{repo_id}/discussions/{repo.prs}"
                else:
                    repo.refs[unquote(revision)] = len(repo.commits) - 1
            self.reply(200, result)

        def commit_of(self, repo_id: str, revision: str, head: bool):
            """(repo, sha, files) of a readable revision, or None after replying with an error."""
            repo = self.repo(repo_id, head=head)
            if repo is None:
                return None
            try:
                return (repo, *repo.head(revision))
            except KeyError:
                self.error(404, f"Revision Not Found: {revision}", head=head, error_code="RevisionNotFound")
                return None

        def info(self, repo_id: str, revision: str, head: bool):
            found = self.commit_of(repo_id, revision, head)
            if found is None:
                return
            repo, sha, files = found
            siblings = [{"rfilename": e["path"], "size": e["size"],
                         **({"lfs": {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}}
                            if "lfs" in e else {})}
                        for e in _listing(files, "", recursive=True) if e["type"] == "file"]
            self.reply(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                             "siblings": siblings, "tags": [], "downloads": 0, "likes": 0},
                       head=head)

        def tree(self, repo_id: str, revision: str, base: str, recursive: bool, expand: bool, head: bool):
            found = self.commit_of(repo_id, revision, head)
            if found is None:
                return
            repo, sha, files = found
            entries = _listing(files, base, recursive)
            if entries is None:
                return self.error(404, f"Entry Not Found: {base} is not a folder at {revision}", head=head,
                                  error_code="EntryNotFound")
            if expand:
                for e in entries:
                    e["lastCommit"] = repo.last_commit(sha, e["path"])
            self.reply(200, entries, head=head)

        def paths_info(self, repo_id: str, revision: str):
            raw = self.body()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                req = json.loads(raw or b"{}")
                paths, expand = req.get("paths", []), bool(req.get("expand"))
            else:  # what HfApi.get_paths_info sends: form-encoded, paths repeated
                form = parse_qs(raw.decode(), keep_blank_values=True)
                paths, expand = form.get("paths", []), _truthy((form.get("expand") or [None])[-1])
            found = self.commit_of(repo_id, revision, head=False)
            if found is None:
                return
            repo, sha, files = found
            out = []
            for p in ([paths] if isinstance(paths, str) else paths):
                p = p.strip("/")
                entry = _entry_of(files, p)
                if entry is None:
                    continue  # as the Hub does: a missing path is left out
                if expand:
                    entry["lastCommit"] = repo.last_commit(sha, p)
                out.append(entry)
            self.reply(200, out)

        def resolve(self, repo_id: str, revision: str, name: str, head: bool):
            self.rec.kind, self.rec.repo_id, self.rec.name = "file", repo_id, name
            found = self.commit_of(repo_id, revision, head)
            if found is None:
                return
            _, sha, files = found
            if name not in files:
                return self.error(404, "Entry Not Found", head=head, error_code="EntryNotFound")
            content = files[name]
            headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            if isinstance(content, tuple):
                size = content[1]
                headers["X-Linked-Etag"] = f'"{content[0]}"'
                headers["X-Linked-Size"] = str(size)
                headers["ETag"] = f'"{content[0]}"'
            else:
                size = len(content)
                headers["ETag"] = f'"{hashlib.sha1(content).hexdigest()}"'
            start, end = 0, size  # [start, end)
            status = 200
            spec = self.headers.get("Range")
            if spec is not None:
                parsed = _parse_range(spec, size)
                if parsed == "unsatisfiable":
                    return self.reply(416, {"error": f"Range {spec} not satisfiable for {size} bytes"},
                                      headers={"Content-Range": f"bytes */{size}", **headers}, head=head)
                if parsed is not None:
                    start, end = parsed
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self.rec.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            with state.lock:
                flips = sorted(state.corruptions.get((repo_id, name), ()))
            drop = state.take_rule(("drop",), lambda r: name.endswith(r.match))
            stall = state.take_rule(("stall",), lambda r: name.endswith(r.match))
            if drop:
                self.rec.fault = "drop"
            if stall:
                self.rec.fault = "stall" if not drop else "drop+stall"
            if flips:
                self.rec.fault = (self.rec.fault + "+corrupt") if self.rec.fault else "corrupt"
            if isinstance(content, tuple):
                with open(state.blobs / content[0], "rb") as f:
                    f.seek(start)
                    self.send_body(f.read, start, end, flips, drop, stall)
            else:
                view = memoryview(content)
                cursor = [start]

                def read(n: int) -> bytes:
                    piece = bytes(view[cursor[0]:cursor[0] + n])
                    cursor[0] += len(piece)
                    return piece

                self.send_body(read, start, end, flips, drop, stall)

        def send_body(self, read, start: int, end: int, flips: list[int], drop: Rule | None,
                      stall: Rule | None):
            """Write bytes [start, end) of a file, applying corruption, faults and the bandwidth."""
            sent, total = 0, end - start
            stalled = False
            while sent < total:
                if drop is not None and sent >= drop.nbytes:
                    self.cut(drop.reset)
                if stall is not None and not stalled and sent >= stall.nbytes:
                    stalled = True
                    state.closing.wait(stall.seconds)
                n = min(CHUNK, total - sent)
                if drop is not None:  # stop exactly at the byte counts the faults name
                    n = min(n, drop.nbytes - sent)
                if stall is not None and not stalled:
                    n = min(n, stall.nbytes - sent)
                piece = read(n)
                if len(piece) != n:
                    raise OSError(f"blob shorter than its recorded size at {start + sent}")
                at = start + sent
                hit = [o for o in flips if at <= o < at + n]
                if hit:
                    piece = bytearray(piece)
                    for o in hit:
                        piece[o - at] ^= 0x01
                if state.download is not None:
                    state.download.take(n)
                # Counted before the write: a test may read the record as soon as the last byte
                # arrives; a write that fails takes its piece back.
                self.rec.sent = sent + n
                try:
                    self.wfile.write(piece)
                except OSError:
                    self.rec.sent = sent
                    raise
                sent += n

    return Handler


def _temp_file(state: HubState) -> Path:
    fd, name = tempfile.mkstemp(dir=state.tmp)
    os.close(fd)
    return Path(name)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _parse_range(spec: str, size: int):
    """(start, end) for one satisfiable byte range, "unsatisfiable", or None to ignore the header."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", spec)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None  # several ranges or not bytes: serve the whole file
    if m.group(1) == "":  # the last n bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(m.group(1))
    if start >= size:
        return "unsatisfiable"
    last = int(m.group(2)) if m.group(2) else size - 1
    if last < start:
        return None  # an invalid range is ignored (RFC 9110)
    return start, min(last, size - 1) + 1


def _file_entry(name: str, content) -> dict:
    if isinstance(content, tuple):
        return {"type": "file", "path": name, "size": content[1], "oid": content[0],
                "lfs": {"oid": content[0], "size": content[1], "pointerSize": 134}}
    return {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}


def _dir_entry(name: str, files: dict) -> dict:
    below = sorted(p for p in files if p.startswith(name + "/"))
    return {"type": "directory", "path": name, "oid": hashlib.sha1("\n".join(below).encode()).hexdigest()}


def _folders(files: dict) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


def _entry_of(files: dict, path: str) -> dict | None:
    if path in files:
        return _file_entry(path, files[path])
    if path in _folders(files):
        return _dir_entry(path, files)
    return None


def _listing(files: dict, base: str, recursive: bool) -> list[dict] | None:
    """Tree entries under folder ``base`` ("" = root): direct children, or everything below when
    recursive; None when ``base`` is not a folder. LFS files carry their sha256 oid."""
    folders = _folders(files)
    if base and base not in folders:
        return None
    prefix = base + "/" if base else ""

    def wanted(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

    entries = [_dir_entry(d, files) for d in folders if wanted(d)]
    entries += [_file_entry(p, c) for p, c in files.items() if wanted(p)]
    return sorted(entries, key=lambda e: e["path"])


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(COPY_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


class LocalHub:
    """``with LocalHub(tmp_path) as hub: hub.endpoint`` -> ``http://127.0.0.1:PORT``.

    Args:
        root: folder for blobs, parts and temporary files.
        bandwidth: bytes/s shared by every resolve body at once (None: unlimited).
        upload_bandwidth: bytes/s shared by every LFS PUT body at once (None: unlimited).
        multipart_threshold, part_size: LFS objects above the threshold are offered multipart
            uploads in parts of ``part_size`` bytes.
    """

    def __init__(self, root: Path, bandwidth: float | None = None, upload_bandwidth: float | None = None,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE):
        self.state = HubState(Path(root), bandwidth, upload_bandwidth, multipart_threshold, part_size)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "LocalHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.state.closing.set()  # wake stalled responses
        self.server.shutdown()
        self.server.server_close()

    # -- bandwidth -------------------------------------------------------------------------------
    @property
    def bandwidth(self) -> float | None:
        return self.state.download.rate if self.state.download else None

    @bandwidth.setter
    def bandwidth(self, rate: float | None) -> None:
        if not rate:
            self.state.download = None
        elif self.state.download is None:
            self.state.download = TokenBucket(rate)
        else:
            self.state.download.set_rate(rate)

    # -- faults ----------------------------------------------------------------------------------
    def fail(self, match: str, status: int = 503, times: int | None = 1, method: str | None = None) -> None:
        """The next ``times`` requests (of ``method`` if given) whose decoded URL path contains
        ``match`` answer ``status``."""
        with self.state.lock:
            self.state.rules.append(Rule("fail", match, times, status=status, method=method))

    def drop_after(self, name: str, nbytes: int, times: int | None = 1, reset: bool = False) -> None:
        """The next ``times`` GETs of a file whose repo path ends with ``name`` send ``nbytes`` body
        bytes, then the connection is closed (FIN; ``reset=True``: RST)."""
        with self.state.lock:
            self.state.rules.append(Rule("drop", name, times, nbytes=nbytes, reset=reset))

    def stall(self, name: str, after_bytes: int, seconds: float, times: int | None = 1) -> None:
        """The next ``times`` GETs of a file whose repo path ends with ``name`` send ``after_bytes``
        body bytes, then pause ``seconds`` before the rest."""
        with self.state.lock:
            self.state.rules.append(Rule("stall", name, times, nbytes=after_bytes, seconds=seconds))

    def corrupt(self, repo_id: str, name: str, offset: int) -> None:
        """From now on, serve byte ``offset`` of ``repo_id``'s file ``name`` XOR 0x01 (its advertised
        size, ETag and LFS sha256 are unchanged)."""
        with self.state.lock:
            self.state.corruptions.setdefault((repo_id, name), set()).add(offset)

    def down(self, on: bool = True, close: bool = False) -> None:
        """While on, every request answers 503 (``close=True``: the connection is closed unanswered)."""
        with self.state.lock:
            self.state.down = ("close" if close else "503") if on else None

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.rules.clear()
            self.state.corruptions.clear()
            self.state.down = None

    # -- logs ------------------------------------------------------------------------------------
    def requests(self, name: str | None = None, kind: str | None = "file",
                 method: str | None = None) -> list[Request]:
        """Snapshots of the logged requests in arrival order: of ``kind`` ("file", "upload", "api"
        or None for all), whose ``name`` (repo path / LFS oid) ends with ``name``, of ``method``."""
        with self.state.lock:
            records = list(self.state.records)
        return [dataclasses.replace(r) for r in records
                if (kind is None or r.kind == kind) and (method is None or r.method == method)
                and (name is None or (r.name or "").endswith(name))]

    def traffic(self) -> dict[str, int]:
        """{"down": file body bytes sent, "up": LFS upload body bytes received} so far."""
        records = self.requests(kind=None)
        return {"down": sum(r.sent for r in records if r.kind == "file"),
                "up": sum(r.received for r in records if r.kind == "upload")}

    # -- seeding and inspection -----------------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path, private: bool = False, link: bool = True) -> str:
        """Store every file under ``folder`` as one commit on ``main`` of ``repo_id`` (created if
        missing) and return the commit sha. Files that ``is_lfs`` picks are hashed in pieces and
        hard-linked into the blob store (copied when linking fails or ``link`` is False): a linked
        source file must not be modified afterwards. The rest is held in memory."""
        folder = Path(folder)
        new: dict[str, bytes | tuple[str, int]] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            size = path.stat().st_size
            if not is_lfs(name, size):
                new[name] = path.read_bytes()
                continue
            oid = _hash_file(path)
            blob = self.state.blobs / oid
            if not blob.exists():
                tmp = self.state.tmp / f"seed-{oid}-{threading.get_ident()}"
                tmp.unlink(missing_ok=True)
                try:
                    if not link:
                        raise OSError("copy asked")
                    os.link(path, tmp)
                except OSError:
                    shutil.copyfile(path, tmp)
                os.replace(tmp, blob)
            new[name] = (oid, size)
        with self.state.lock:
            repo = self.state.repos.setdefault(repo_id, Repo(repo_id, private))
            repo.objects.update(c[0] for c in new.values() if isinstance(c, tuple))
            head_sha, files = repo.head("main")
            sha = repo.add_commit(head_sha, f"seed from {folder.name}", {**files, **new})
            repo.refs["main"] = len(repo.commits) - 1
        return sha

    def manifest(self, repo_id: str, revision: str = "main") -> dict[str, dict]:
        """{path: {"sha256", "size", "lfs"}} of every file of ``repo_id`` at ``revision``."""
        with self.state.lock:
            _, files = self.state.repos[repo_id].head(revision)
            files = dict(files)
        out = {}
        for name, content in sorted(files.items()):
            if isinstance(content, tuple):
                out[name] = {"sha256": content[0], "size": content[1], "lfs": True}
            else:
                out[name] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "lfs": False}
        return out

    def blob_path(self, oid: str) -> Path:
        return self.state.blobs / oid
