"""A small local stand-in for the Hugging Face Hub HTTP API, for tests without the internet.

It implements what the real ``huggingface_hub`` client calls for ``create_repo``, ``preupload``,
the LFS batch API (basic and multipart uploads), ``commit`` (NDJSON), ``validate-yaml``, repo
info and file resolution/download; repos live in memory as commits of path -> bytes, LFS blobs
on disk by sha256. Runs on 127.0.0.1, port 0, in a thread. Xet is not offered, so clients need
``HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

MULTIPART_THRESHOLD = 1_000_000  # objects above this size are offered multipart uploads
PART_SIZE = 400_000
TOKEN = "hf_test_token"


class Repo:
    def __init__(self, repo_id: str, private: bool):
        self.repo_id = repo_id
        self.private = private
        self.commits: list[tuple[str, dict[str, bytes | tuple[str, int]]]] = [
            (hashlib.sha1(repo_id.encode()).hexdigest(), {})]
        self.refs = {"main": 0}
        self.prs = 0

    def head(self, revision: str) -> tuple[str, dict]:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        for sha, files in self.commits:
            if sha == revision:
                return sha, files
        raise KeyError(revision)


class HubState:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "lfs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.parts: dict[str, dict[int, bytes]] = {}
        self.lock = threading.Lock()
        self.log: list[str] = []


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

        def body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def reply(self, code: int, obj=None, headers: dict | None = None, raw: bytes | None = None,
                  head: bool = False):
            data = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else b"")
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def error(self, code: int, message: str, head: bool = False):
            self.reply(code, {"error": message}, headers={"X-Error-Message": message}, head=head)

        def repo(self, repo_id: str, write: bool = False) -> Repo | None:
            repo = state.repos.get(repo_id)
            if repo is None or (repo.private and not self.authed()) or (write and not self.authed()):
                self.error(401 if repo is not None or write else 404, f"Repository {repo_id} not found or not authorized")
                return None
            return repo

        # -- routes ----------------------------------------------------------------------------
        def do_POST(self):
            state.log.append(f"POST {self.path}")
            path = unquote(self.path.split("?")[0])
            if path == "/api/repos/create":
                return self.create_repo(json.loads(self.body()))
            if path == "/api/validate-yaml":
                self.body()
                return self.reply(200, {})
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

        def do_PUT(self):
            state.log.append(f"PUT {self.path}")
            m = re.fullmatch(r"/lfs/(\w+)(?:/part/(\d+))?", self.path)
            if not m:
                return self.error(404, "no route")
            data = self.body()
            oid, part = m.group(1), m.group(2)
            with state.lock:
                if part is None:
                    if hashlib.sha256(data).hexdigest() != oid:
                        return self.error(400, "sha256 mismatch")
                    (state.blobs / oid).write_bytes(data)
                    return self.reply(200, {})
                state.parts.setdefault(oid, {})[int(part)] = data
            self.reply(200, {}, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

        def do_GET(self):
            self.get_or_head(head=False)

        def do_HEAD(self):
            self.get_or_head(head=True)

        def get_or_head(self, head: bool):
            state.log.append(f"{'HEAD' if head else 'GET'} {self.path}")
            path = unquote(self.path.split("?")[0])
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
            if m:
                return self.tree(m.group(1), m.group(2), head)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
            if m:
                return self.info(m.group(1), m.group(2) or "main", head)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self.resolve(m.group(1), m.group(2), m.group(3), head)
            self.error(404, f"no route GET {path}", head=head)

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
                      "uploadMode": "lfs" if f["size"] > 2000 or f["path"].endswith(".safetensors") else "regular"}
                     for f in req["files"]]
            self.reply(200, {"files": files})

        def lfs_batch(self, repo_id: str, req: dict):
            if self.repo(repo_id, write=True) is None:
                return
            objects = []
            multipart = False
            for obj in req["objects"]:
                oid, size = obj["oid"], obj["size"]
                if (state.blobs / oid).exists():
                    objects.append({"oid": oid, "size": size})  # already there: no action
                    continue
                if size > MULTIPART_THRESHOLD and "multipart" in req.get("transfers", []):
                    multipart = True
                    n = -(-size // PART_SIZE)
                    header = {"chunk_size": str(PART_SIZE)}
                    header.update({f"{i + 1:05d}": f"{self.base}/lfs/{oid}/part/{i + 1}" for i in range(n)})
                    actions = {"upload": {"href": f"{self.base}/lfs/{oid}/complete", "header": header}}
                else:
                    actions = {"upload": {"href": f"{self.base}/lfs/{oid}"}}
                actions["verify"] = {"href": f"{self.base}/lfs/{oid}/verify"}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
            self.reply(200, {"transfer": "multipart" if multipart else "basic", "objects": objects})

        def lfs_finish(self, oid: str, what: str, req: dict):
            with state.lock:
                if what == "complete":
                    parts = state.parts.pop(oid, {})
                    data = b"".join(parts[i] for i in sorted(parts))
                    if hashlib.sha256(data).hexdigest() != oid:
                        return self.error(400, "multipart upload sha256 mismatch")
                    (state.blobs / oid).write_bytes(data)
                elif not (state.blobs / oid).exists():
                    return self.error(404, "object not uploaded")
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
                        if not (state.blobs / v["oid"]).exists():
                            return self.error(422, f"LFS object {v['oid']} was never uploaded")
                        new[v["path"]] = (v["oid"], v["size"])
                    elif x["key"] == "deletedFile":
                        new.pop(v["path"], None)
                sha = hashlib.sha1(json.dumps([head_sha, header, sorted(new)]).encode()).hexdigest()
                repo.commits.append((sha, new))
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
            repo = self.repo(repo_id)
            if repo is None:
                return None
            try:
                return (repo, *repo.head(revision))
            except KeyError:
                self.error(404, f"Revision Not Found: {revision}", head=head)
                return None

        def info(self, repo_id: str, revision: str, head: bool):
            found = self.commit_of(repo_id, revision, head)
            if found is None:
                return
            repo, sha, files = found
            siblings = [{"rfilename": e["path"], "size": e["size"],
                         **({"lfs": {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}}
                            if "lfs" in e else {})}
                        for e in _entries(files)]
            self.reply(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                             "siblings": siblings, "tags": [], "downloads": 0, "likes": 0},
                       head=head)

        def tree(self, repo_id: str, revision: str, head: bool):
            found = self.commit_of(repo_id, revision, head)
            if found is not None:
                self.reply(200, _entries(found[2]), head=head)

        def resolve(self, repo_id: str, revision: str, name: str, head: bool):
            found = self.commit_of(repo_id, revision, head)
            if found is None:
                return
            _, sha, files = found
            if name not in files:
                return self.error(404, "Entry Not Found", head=head)
            content = files[name]
            headers = {"X-Repo-Commit": sha}
            if isinstance(content, tuple):
                data = (state.blobs / content[0]).read_bytes()
                headers["X-Linked-Etag"] = f'"{content[0]}"'
                headers["X-Linked-Size"] = str(content[1])
                headers["ETag"] = f'"{content[0]}"'
            else:
                data = content
                headers["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
            self.reply(200, raw=data, headers=headers, head=head)

    return Handler


def _entries(files: dict) -> list[dict]:
    """Tree entries for a commit's files: LFS ones carry their sha256 oid."""
    entries = []
    for name, content in sorted(files.items()):
        if isinstance(content, tuple):
            entries.append({"type": "file", "path": name, "size": content[1], "oid": content[0],
                            "lfs": {"oid": content[0], "size": content[1], "pointerSize": 134}})
        else:
            entries.append({"type": "file", "path": name, "size": len(content),
                            "oid": hashlib.sha1(content).hexdigest()})
    return entries


class LocalHub:
    """``with LocalHub(tmp_path) as hub: hub.endpoint`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self, root: Path):
        self.state = HubState(Path(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "LocalHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
