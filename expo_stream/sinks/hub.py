"""A merge published straight to a Hub repo: each shard uploaded as it is done, one commit at the end.

The shards are computed into a small local staging directory in the user's cache; as each one
is complete it is checked (its recorded digests, and one of its tensors recomputed from the
inputs), pre-uploaded (huggingface_hub's ``preupload_lfs_files``) and deleted, while the next
shard is computed: at most two output shards are on disk at once. Config, index, tokenizer,
recipe and model card follow, and one commit publishes them all, so nobody sees a half-pushed
model. A record of the shards already uploaded stays in the cache beside the staging directory:
a re-run of an interrupted push asks the Hub which of those objects it holds, and neither
recomputes nor re-uploads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

from ..errors import OutputError
from ..format.manifest import check_file
from ..format.recipe import RECIPE_NAME, publishable_recipe
from ..format.writer import WRITTEN_LIST, Staging
from ..hub import HubError, endpoint, hub_errors
from ..plan.planner import Plan
from ..sources.hub import quiet_progress
from .local import LocalSink, plan_fingerprint

log = logging.getLogger(__name__)

UPLOADED_NAME = "uploaded.json"  # the shards a push has already pre-uploaded


def work_dir(plan: Plan, repo_id: str) -> Path:
    """Where a push of ``plan`` to ``repo_id`` keeps its staging directory and upload record."""
    from huggingface_hub import constants

    key = hashlib.sha256(f"{repo_id}\n{plan_fingerprint(plan)}".encode()).hexdigest()[:16]
    return Path(constants.HF_HOME) / "expo-stream" / "pushes" / f"{repo_id.replace('/', '--')}-{key}"


class HubSink:
    """Pre-uploads each finished shard of ``plan`` to ``repo_id`` and commits once at the end.

    Args:
        plan: the plan being written.
        staging: the open (locked) local staging directory the shards are computed into.
        subdirs: one subdirectory per schedule (``"."`` for one): the same paths in the repo.
        repo_id: the repo to publish to (created if needed, ``private`` then).
        check: ``check(index, paths)`` raises when a computed shard is wrong (verify's checks).
        verified: ``verified(file)`` tells whether an input's digest has been checked. A shard
            uploaded before all of its inputs were is recorded as unconfirmed, and a resumed run
            computes it again: it may rest on bytes that later proved corrupt.
    """

    def __init__(self, plan: Plan, staging: Staging, subdirs: list[str], repo_id: str, *,
                 private: bool = False, check=None, verified=lambda file: True):
        from huggingface_hub import HfApi

        _refuse_offline(repo_id)
        quiet_progress()  # the merge's own bar shows the work
        self.plan, self.staging, self.subdirs = plan, staging, list(subdirs)
        self.repo_id, self.check, self.verified = repo_id, check, verified
        self.local = LocalSink(plan, staging, subdirs)
        self.api = HfApi(endpoint=endpoint())
        self.record_path = staging.path.parent / UPLOADED_NAME
        self.uploaded: dict[str, dict] = {}  # path in repo -> {"sha256", "size"}
        self.confirmed: set[int] = set()  # shards whose every input's digest has been checked
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.uploaded_bytes = 0
        with hub_errors(repo_id):
            self.api.create_repo(repo_id, private=private, exist_ok=True)
            self.head = self.api.repo_info(repo_id).sha  # the commit builds on this one

    def _in_repo(self, sub: str, name: str) -> str:
        return name if sub == "." else f"{sub}/{name}"

    def completed(self) -> set[int]:
        """Shards an interrupted push of the same plan uploaded and the Hub still holds."""
        self.local.completed()  # creates the subdirectories; a foreign staging dir is reset
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if record.get("fingerprint") != self.local.fingerprint:
            return set()
        listed = {k: v for k, v in record.get("shards", {}).items()
                  if isinstance(v, dict) and isinstance(v.get("sha256"), str)
                  and v.get("confirmed") is True}
        present = self._objects_present(listed)
        kept = set()
        for shard in self.plan.shards:
            paths = [self._in_repo(sub, shard.filename) for sub in self.subdirs]
            if all(p in listed and listed[p]["sha256"] in present for p in paths):
                kept.add(shard.index)
                self.confirmed.add(shard.index)
                for p in paths:
                    self.uploaded[p] = {"sha256": listed[p]["sha256"], "size": listed[p]["size"]}
        return kept

    def _objects_present(self, listed: dict[str, dict]) -> set[str]:
        """The sha256s among ``listed`` that the Hub's LFS store already holds."""
        if not listed:
            return set()
        from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info

        infos = [UploadInfo(sha256=bytes.fromhex(v["sha256"]), size=int(v["size"]), sample=b"")
                 for v in listed.values()]
        with hub_errors(self.repo_id):
            actions, _, _ = post_lfs_batch_info(infos, token=None, repo_type="model",
                                                repo_id=self.repo_id, endpoint=endpoint())
        return {a["oid"] for a in actions if not a.get("actions")}

    def shard_done(self, index: int, records: tuple[dict, ...]) -> None:
        """Hand a computed shard to the uploader (after the previous one is uploaded); a shard
        that its task uploaded itself (records carrying ``uploaded``) is only recorded."""
        self.wait()
        self._confirm()
        if all("uploaded" in r for r in records):
            shard = self.plan.shards[index]
            for sub, record in zip(self.subdirs, records):
                self.uploaded[self._in_repo(sub, shard.filename)] = record["uploaded"]
                self.uploaded_bytes += record["uploaded"]["size"]
            self._save_record()
            return
        self.local.shard_done(index, records)
        self._thread = threading.Thread(target=self._upload, args=(index, records),
                                        name="expo-upload", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the shard being uploaded is uploaded; raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def _upload(self, index: int, records: tuple[dict, ...]) -> None:
        try:
            shard = self.plan.shards[index]
            paths = [self.staging.path / sub / shard.filename for sub in self.subdirs]
            if self.check is not None:
                self.check(index, paths)
            uploaded = upload_shard(self.repo_id, paths, records,
                                    [self._in_repo(sub, shard.filename) for sub in self.subdirs])
            for sub, done in zip(self.subdirs, uploaded):
                self.uploaded[self._in_repo(sub, shard.filename)] = done
                self.uploaded_bytes += done["size"]
            self._confirm()  # records the upload (the driver is waiting on this thread or busy)
        except BaseException as exc:  # noqa: BLE001 - raised in the driver by wait()
            self._error = exc

    def _confirm(self) -> None:
        """Mark the uploaded shards whose inputs have all had their digests checked."""
        done = {s.index for s in self.plan.shards
                if all(self._in_repo(sub, s.filename) in self.uploaded for sub in self.subdirs)}
        for index in done - self.confirmed:
            files = {info.file for t in self.plan.shards[index].tensors
                     for info in (t.dpo, t.sft) if info is not None}
            if all(self.verified(f) for f in files):
                self.confirmed.add(index)
        self._save_record()

    def _save_record(self) -> None:
        confirmed = {self._in_repo(sub, self.plan.shards[i].filename)
                     for i in self.confirmed for sub in self.subdirs}
        shards = {k: {**v, "confirmed": k in confirmed} for k, v in self.uploaded.items()}
        tmp = self.record_path.with_name(f"{UPLOADED_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.local.fingerprint, "repo": self.repo_id,
                                   "shards": shards}, indent=1), encoding="utf-8")
        os.replace(tmp, self.record_path)

    def commit(self, message: str) -> str:
        """One commit of every uploaded shard and the small files in the staging directory.

        Returns:
            The commit URL.
        """
        self.wait()
        self._confirm()
        ops = [_uploaded(path, **v) for path, v in self.uploaded.items()]
        shard_names = {s.filename for s in self.plan.shards}
        for sub in self.subdirs:
            for op in folder_operations(self.staging.path / sub, skip=shard_names):
                op.path_in_repo = self._in_repo(sub, op.path_in_repo)
                ops.append(op)
        with hub_errors(self.repo_id):
            info = self.api.create_commit(self.repo_id, operations=ops, commit_message=message,
                                          parent_commit=self.head)
        return info.commit_url

    def finished(self) -> None:
        """The commit is made: drop the staging directory and the upload record."""
        self.staging.abort()
        shutil.rmtree(self.staging.path.parent, ignore_errors=True)


def upload_shard(repo_id: str, paths: list[Path], records: tuple[dict, ...],
                 in_repo: list[str]) -> list[dict]:
    """Check shard files against their records, pre-upload them and delete them.

    Returns:
        ``{"sha256", "size"}`` of each uploaded object, as the final commit needs it.

    Raises:
        OutputError: a file's bytes differ from its record. HubError: the upload failed.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    for path, record in zip(paths, records):
        problem = check_file(path, record)
        if problem:
            raise OutputError(f"{path}: {problem}; not uploading it")
    ops = [CommitOperationAdd(name, str(path)) for name, path in zip(in_repo, paths)]
    with hub_errors(repo_id):
        HfApi(endpoint=endpoint()).preupload_lfs_files(repo_id, additions=ops)
    for path in paths:
        path.unlink()
    return [{"sha256": op.upload_info.sha256.hex(), "size": op.upload_info.size} for op in ops]


def _uploaded(path_in_repo: str, sha256: str, size: int):
    """A commit operation for an object pre-uploaded by an earlier run (its bytes are not here).

    huggingface_hub has no public constructor for this; after ``preupload_lfs_files`` an
    operation holds just these fields (its content freed), which is what ``create_commit`` reads.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.lfs import UploadInfo

    op = CommitOperationAdd(path_in_repo, b"")
    op.upload_info = UploadInfo(sha256=bytes.fromhex(sha256), size=int(size), sample=b"")
    op._upload_mode = "lfs"
    op._is_uploaded = True
    return op


def upload_folder(folder: Path, repo_id: str, *, private: bool = False,
                  revision: str | None = None, create_pr: bool = False,
                  commit_message: str | None = None, token: str | None = None) -> str:
    """Publish an output ``folder`` as one commit on ``repo_id`` (created if needed).

    Returns:
        The commit URL (or the pull request URL with ``create_pr``).

    Raises:
        HubError: offline, or the Hub refused (no token for a private repo, a moved branch...).
    """
    from huggingface_hub import HfApi

    _refuse_offline(repo_id)
    api = HfApi(endpoint=endpoint(), token=token)
    with hub_errors(repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=revision).sha
        info = api.create_commit(
            repo_id, operations=folder_operations(folder), revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {folder.name} (expo-stream)",
            parent_commit=head,
        )
    return info.pr_url if create_pr and info.pr_url else info.commit_url


def folder_operations(folder: Path, skip: set[str] = frozenset()) -> list:
    """One commit operation per file of an output ``folder`` (names in ``skip`` and the local
    list of written files left out); its recipe as :func:`publishable_recipe` gives it."""
    from huggingface_hub import CommitOperationAdd

    ops = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name == WRITTEN_LIST or path.name in skip:
            continue
        content = str(path)
        if path.name == RECIPE_NAME:
            recipe = publishable_recipe(json.loads(path.read_text(encoding="utf-8")))
            content = (json.dumps(recipe, indent=2) + "\n").encode("utf-8")
        ops.append(CommitOperationAdd(path.relative_to(folder).as_posix(), content))
    return ops


def _refuse_offline(repo_id: str) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubError(f"{repo_id}: HF_HUB_OFFLINE=1 is set; pushing needs the Hub (unset it)")
