"""``push``: a merged output, verified, published on the Hub as one commit."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..sinks.hub import upload_folder
from .verify import verify


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
    folder = Path(folder)
    reports = verify(folder, sample=verify_sample)
    if len(reports) != 1 or reports[0].path.resolve() != folder.resolve():
        raise UsageError(f"{folder}: holds several models; push each subdirectory on its own")
    if not reports[0].ok:
        raise UsageError(f"{folder}: verify failed, not pushing: {reports[0].problems[0]}")
    return upload_folder(folder, repo_id, private=private, revision=revision,
                         create_pr=create_pr, commit_message=commit_message, token=token)
