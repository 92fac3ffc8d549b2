"""Where input bytes come from: a reader per file with ``read_into(offset, buffer)``.

A plan names each input as an :class:`~expo_stream.format.files.InputFile`; :func:`open_input`
gives the reader of its source. ``local`` reads local files with positional reads into buffers
the executor reuses; ``hub`` streams Hub files with range requests (``--stream``). A new kind of
input (an object store, a mounted bucket) is one new module with the same methods and one line
here.
"""

from __future__ import annotations

import sys

from ..format.files import InputFile


def open_input(file: InputFile):
    """A reader of ``file``: ``read_into``, ``prefetch``, ``release``, ``close``."""
    if file.source == "local":
        from .local import LocalFile

        return LocalFile(file.path)
    if file.source == "hub":
        from .hub import STREAMS

        return STREAMS.open(file)
    raise ValueError(f"{file}: unknown input source {file.source!r}")


class _LocalOnce:
    def __init__(self, file: InputFile):
        self._f = open(file.path, "rb")

    def read_at(self, offset: int, view: memoryview) -> int:
        self._f.seek(offset)
        return self._f.readinto(view)

    def close(self) -> None:
        self._f.close()


class _HubOnce:
    def __init__(self, file: InputFile):
        self.file = file

    def read_at(self, offset: int, view: memoryview) -> int:
        from .hub import fetch_range

        fetch_range(self.file, offset, view)
        return len(view)

    def close(self) -> None:
        pass


def open_once(file: InputFile):
    """A reader for a few reads outside a merge's streams: ``read_at(offset, view) -> bytes read``."""
    return _LocalOnce(file) if file.source == "local" else _HubOnce(file)


def finish_inputs(files) -> None:
    """Check every streamed input in ``files`` end to end (its sha256) before anything is published.

    Raises:
        FormatError: a file's bytes differ from its published digest.
        HubError: the rest of a file cannot be read.
    """
    streamed = [f for f in files if f.source == "hub"]
    if streamed:
        from .hub import STREAMS

        STREAMS.finish(streamed)


def close_inputs() -> None:
    """Stop every input stream this process opened (their buffers are freed)."""
    hub = sys.modules.get(__name__ + ".hub")
    if hub is not None:
        hub.STREAMS.close()
