"""The Hugging Face Hub: checkpoints by repo id in, merged models out.

Uses the real ``huggingface_hub`` client and its standard environment: ``HF_TOKEN`` (or a
stored login), ``HF_HOME``/the standard cache, ``HF_ENDPOINT`` (read at call time and passed
explicitly, so it works whenever it is set) and ``HF_HUB_OFFLINE=1`` (use the cache only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import ExpoStreamError, OutputError, UsageError, os_problem
from .format.checkpoint import INDEX_NAME, SIDE_FILES

REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# What a merge needs from a model repo (the side files a merge copies); nothing else is downloaded.
_MODEL_FILES = ["config.json", *SIDE_FILES]
MERGE_FILES = ["*.safetensors", INDEX_NAME, *_MODEL_FILES]
BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json", *_MODEL_FILES]


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

    A local path always wins over a repo id of the same spelling. The one resolver of model
    locations: merge, generate, score and select-alpha all go through it.

    Raises:
        UsageError: neither an existing path nor a repo id.
        HubError: one line naming the repo and what to do (not found, no access, offline,
            network down, rate limited).
    """
    path = Path(spec)
    if path.exists():
        return Source(path, str(spec))
    m = REPO_ID.match(str(spec))
    if not m:
        raise UsageError(f"{spec}: no such file or directory, and not a Hub repo id (org/name[@rev])")
    from huggingface_hub import snapshot_download

    with hub_errors(str(spec)):
        patterns = MERGE_FILES if _has_safetensors(m.group("repo"), m.group("revision")) else BIN_FILES
        local = snapshot_download(m.group("repo"), revision=m.group("revision"),
                                  allow_patterns=patterns, endpoint=endpoint())
    return Source(Path(local), str(spec), m.group("repo"))


def _has_safetensors(repo_id: str, revision: str | None) -> bool:
    """Whether the repo has safetensors weights (True when offline: the cache decides).

    One plain request (``model_info``): a down network or a missing repo fails at once, where
    the file-tree listing would retry for half a minute.
    """
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return True
    files = [s.rfilename for s in HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision).siblings or []]
    return any(f.endswith(".safetensors") for f in files) or not any(f.endswith(".bin") for f in files)


@contextlib.contextmanager
def hub_errors(repo: str):
    """Every failure of a Hub call as one HubError line naming ``repo`` and what to do.

    huggingface_hub's own retry warnings are held back meanwhile: the error says it all.
    """
    from huggingface_hub import constants
    from huggingface_hub import errors as hf
    from huggingface_hub.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # e.g. "not enough free disk space": the error says it
            warnings.simplefilter("ignore")
            yield
    except hf.GatedRepoError:  # a RepositoryNotFoundError too: first
        raise HubError(f"{repo}: gated repo; accept its terms on the Hub and set HF_TOKEN") from None
    except (hf.RepositoryNotFoundError, hf.RevisionNotFoundError) as exc:
        what = "revision not found" if isinstance(exc, hf.RevisionNotFoundError) else "not found"
        raise HubError(_not_found(repo, what)) from None
    except (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled):
        raise HubError(f"{repo}: not in the local cache, and the Hub cannot be reached or "
                       "HF_HUB_OFFLINE=1 is set (download it once online)") from None
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:  # a server that does not say which (no X-Error-Code)
            raise HubError(_not_found(repo, "not found")) from None
        hint = {401: "check HF_TOKEN or `hf auth login`",
                403: "the token may not read or write this repo",
                409: "the branch moved meanwhile; run the command again",
                412: "the branch moved meanwhile; run the command again",
                429: "rate limited by the Hub; wait a few minutes and run the command again",
                }.get(status, "the Hub answered with an error; run the command again later"
                      if status and status >= 500 else "")
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HubError(f"{repo}: {first}{'; ' + hint if hint else ''}") from None
    except OSError as exc:
        if exc.errno not in _LOCAL_ERRNOS:
            raise HubError(_unreachable(repo, exc)) from None
        # The local side failed (the cache's disk is full, read-only...), not the Hub.
        where = exc.filename or constants.HF_HUB_CACHE
        raise OutputError(f"{where}: {os_problem(exc)} (downloading {repo}; --stream merges "
                          "without storing the inputs)") from None
    except _network_errors() as exc:  # connection refused, DNS, timeouts
        raise HubError(_unreachable(repo, exc)) from None
    finally:
        hf_logging.set_verbosity(level)


_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _unreachable(repo: str, exc: BaseException) -> str:
    from huggingface_hub import constants

    return (f"{repo}: cannot reach the Hub at {endpoint() or constants.ENDPOINT} "
            f"({type(exc).__name__}: {exc}); check the network, or set "
            "HF_HUB_OFFLINE=1 to use the local cache")


def _not_found(repo: str, what: str) -> str:
    from huggingface_hub import constants

    return (f"{repo}: {what} on {endpoint() or constants.ENDPOINT} (check the name; a private "
            "repo also needs HF_TOKEN or `hf auth login`)")


def _network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors (huggingface_hub's client is httpx-based)."""
    import importlib

    found = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)
