"""The Hugging Face Hub: checkpoints by repo id in, merged models out.

Uses the real ``huggingface_hub`` client and its standard environment: ``HF_TOKEN`` (or a
stored login), ``HF_HOME``/the standard cache, ``HF_ENDPOINT`` (read at call time and passed
explicitly, so it works whenever it is set) and ``HF_HUB_OFFLINE=1`` (use the cache only).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ExpoStreamError, UsageError

REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# What a merge needs from a model repo; nothing else is downloaded.
SIDE_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
              "added_tokens.json", "vocab.json", "merges.txt", "*.model", "chat_template.*"]
MERGE_FILES = ["*.safetensors", "model.safetensors.index.json", *SIDE_FILES]
BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json", *SIDE_FILES]


class HubError(ExpoStreamError):
    """The Hub refused or failed a request (auth, not found, conflict, network)."""


@dataclass(frozen=True)
class Source:
    """A checkpoint as the user named it and where it is on disk."""

    path: Path
    name: str  # repo id (with @revision) when it came from the Hub, else the path as given
    repo_id: str | None = None


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def resolve(spec: str | Path) -> Source:
    """A local path as is; ``org/name[@revision]`` through ``snapshot_download``.

    A local path always wins over a repo id of the same spelling.
    """
    path = Path(spec)
    if path.exists():
        return Source(path, str(spec))
    m = REPO_ID.match(str(spec))
    if not m:
        raise UsageError(f"{spec}: no such file or directory, and not a Hub repo id (org/name[@rev])")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        patterns = MERGE_FILES if _has_safetensors(m.group("repo"), m.group("revision")) else BIN_FILES
        local = snapshot_download(m.group("repo"), revision=m.group("revision"),
                                  allow_patterns=patterns, endpoint=endpoint())
    except LocalEntryNotFoundError as exc:
        raise HubError(f"{spec}: not in the local cache and the Hub cannot be reached "
                       f"({str(exc).splitlines()[0]})") from None
    except HfHubHTTPError as exc:
        raise HubError(f"{spec}: {str(exc).splitlines()[0]}") from None
    return Source(Path(local), str(spec), m.group("repo"))


def _has_safetensors(repo_id: str, revision: str | None) -> bool:
    """Whether the repo has safetensors weights (True when offline: the cache decides)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return True
    try:
        files = HfApi(endpoint=endpoint()).list_repo_files(repo_id, revision=revision)
    except (HfHubHTTPError, OSError):
        return True  # let snapshot_download report the problem (or serve the cache)
    return any(f.endswith(".safetensors") for f in files) or not any(f.endswith(".bin") for f in files)


def push(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         create_pr: bool = False, commit_message: str | None = None, token: str | None = None,
         verify_sample: int = 4) -> str:
    """Verify ``folder`` (refusing a broken output), create the repo if needed, upload it.

    Returns:
        The commit URL (or the pull request URL with ``create_pr``).

    Raises:
        UsageError: ``folder`` is not a verified expo-stream output.
        HubError: the Hub refused (no token for a private repo, a stale parent commit, ...).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .execute.verify import verify
    from .format.writer import WRITTEN_LIST

    folder = Path(folder)
    reports = verify(folder, sample=verify_sample)
    if len(reports) != 1 or reports[0].path.resolve() != folder.resolve():
        raise UsageError(f"{folder}: holds several models; push each subdirectory on its own")
    if not reports[0].ok:
        raise UsageError(f"{folder}: verify failed, not pushing: {reports[0].problems[0]}")
    api = HfApi(endpoint=endpoint(), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=revision).sha
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {folder.name} (expo-stream)",
            parent_commit=head, ignore_patterns=[WRITTEN_LIST],
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = {401: "check HF_TOKEN or `hf auth login`",
                403: "the token may not write to this repo",
                409: "the branch moved while uploading; run the push again",
                412: "the branch moved while uploading; run the push again"}.get(status, "")
        raise HubError(f"{repo_id}: {str(exc).splitlines()[0]}{'; ' + hint if hint else ''}") from None
    return info.pr_url if create_pr and info.pr_url else info.commit_url
