"""Local input files, read with positional reads into the caller's (reused) buffers.

Reading a chunk is one ``pread`` of a few MiB into a buffer that the next chunk reuses, not a
memory map faulted in 4 KiB pages: the kernel reads ahead on its own (the file is marked
sequential), the process's resident memory is the buffers and nothing else, and the pages a
chunk used are dropped from the page cache once read, so a merge leaves the cache to others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import system
from ..errors import FormatError


class LocalFile:
    """One input file opened read-only for ``read_into`` from any thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = system.open_for_reading(self.path)
        self.size = system.file_size(self._fd)
        system.advise_file(self._fd, "SEQUENTIAL", 0, 0)

    def read_into(self, offset: int, buffer: np.ndarray) -> None:
        """Fill ``buffer`` (a contiguous array) with the bytes at ``[offset, offset + nbytes)``.

        Raises:
            FormatError: the file ends first (it shrank after its header was read).
        """
        view = memoryview(buffer.reshape(-1).view(np.uint8))
        want = view.nbytes
        while view.nbytes:
            n = system.pread_into(self._fd, view, offset)
            if n == 0:
                raise FormatError(f"{self.path}: ends at byte {offset} but {view.nbytes} more "
                                  f"byte(s) were expected (of {want} at {offset - want + view.nbytes}); "
                                  "did it change during the merge?")
            view, offset = view[n:], offset + n

    def prefetch(self, offset: int, length: int) -> None:
        """Start reading ``[offset, offset + length)`` in the background."""
        system.advise_file(self._fd, "WILLNEED", offset, length)

    def release(self, offset: int, length: int) -> None:
        """The bytes are read: let the page cache drop them."""
        system.advise_file(self._fd, "DONTNEED", offset, length)

    def close(self) -> None:
        if self._fd is not None:
            system.close(self._fd)
            self._fd = None
