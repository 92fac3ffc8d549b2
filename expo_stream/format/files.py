"""How a plan names an input file: by source, id, size and version, never by a local path alone.

A plan built on one machine is computed on others (execute/ray.py) and from other places (the
Hub, through sources/hub.py), so a tensor's location is an :class:`InputFile`: the source that
opens it, an id that source understands, and what tells a changed file from the one planned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HUB_SCHEME = "hf://"


@dataclass(frozen=True)
class InputFile:
    """One input file as its source names it.

    Attributes:
        source: which module of ``expo_stream.sources`` opens it: ``local`` or ``hub``.
        id: ``local``: the absolute path; ``hub``: ``hf://org/name/path/in/repo``.
        size: bytes.
        version: ``local``: the modification time in ns; ``hub``: the commit sha it resolved to.
        sha256: the content's digest where the source publishes one (the Hub's LFS object id):
            the bytes are checked against it as they stream.
    """

    source: str
    id: str
    size: int
    version: str
    sha256: str | None = None

    @classmethod
    def local(cls, path: str | Path, stat: os.stat_result | None = None) -> "InputFile":
        stat = stat or os.stat(path)
        return cls("local", os.path.abspath(path), stat.st_size, str(stat.st_mtime_ns))

    @property
    def name(self) -> str:
        """The file's own name (``model-00001-of-00002.safetensors``)."""
        return self.id.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]

    @property
    def path(self) -> Path:
        """The local path of a ``local`` file."""
        if self.source != "local":
            raise ValueError(f"{self.id} is not a local file")
        return Path(self.id)

    def __str__(self) -> str:
        return self.id
