"""Input files read straight from the Hugging Face Hub with HTTP range requests (``--stream``).

Nothing of a streamed input is written to disk. Each file streams front to back once, in ranges
of ``range_bytes`` with ``in_flight`` requests at a time through huggingface_hub's own session
(its endpoint, token, proxy settings and timeout), into a window of reused buffers that the
executor's threads copy their chunks out of. Every byte is hashed in file order as it arrives, and
the digest is checked against the file's sha256 on the Hub (its LFS object id) once the file
ends: a merge checks every input this way (:func:`finish`) before it publishes anything.

A read behind the window (an SFT checkpoint whose tensors are ordered differently from the DPO
one) is fetched on its own; a read beyond the window slides the window forward (its ranges are
hashed first, and fetched again if they are wanted later). Memory: at most ``window`` buffers of
``range_bytes`` per file that is being read, and a file's buffers are freed once it has been
read through. A dropped connection, a 5xx answer or a stalled response is retried from the byte
already received, with backoff; after ``RETRIES`` tries the error is one line naming the repo,
the file and the offset.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import FormatError, UsageError
from ..format.checkpoint import INDEX_NAME, SIDE_FILES, SINGLE_NAME, Checkpoint, assemble_checkpoint, read_index
from ..format.files import HUB_SCHEME, InputFile
from ..format.safetensors import MAX_HEADER_BYTES, parse_header
from ..hub import REPO_ID, HubError, endpoint, hub_errors

log = logging.getLogger(__name__)

RANGE_BYTES = 8 * 2**20  # one request's bytes: large enough that a request's latency is small
IN_FLIGHT = 3  # requests at once per file: keeps a long-latency link busy
WINDOW = IN_FLIGHT + 1  # ranges held per file (being fetched, or ready to be copied out)
RETRIES = 6  # tries per range after the first, with backoff from 0.5 s doubling to 8 s
SMALL_FILES = ["config.json", INDEX_NAME, *SIDE_FILES]


def split_id(file: InputFile) -> tuple[str, str]:
    """``(repo_id, path in repo)`` of a Hub file."""
    org, name, path = file.id[len(HUB_SCHEME):].split("/", 2)
    return f"{org}/{name}", path


def open_checkpoint(spec: str) -> Checkpoint:
    """The checkpoint of repo ``org/name[@revision]``, its headers read with range requests.

    The small files (config, index, tokenizer...) are downloaded into the Hub cache as usual;
    the weights are named by :class:`InputFile`\\ s of source ``hub`` pinned to the commit the
    revision resolved to, each with its size and sha256.

    Raises:
        UsageError: not a repo id, or ``HF_HUB_OFFLINE`` is set.
        HubError: one line naming the repo (not found, no access, network down...).
        FormatError: a malformed header or index, or a repo without safetensors weights.
    """
    from huggingface_hub import HfApi, constants, snapshot_download

    m = REPO_ID.match(str(spec))
    if not m:
        raise UsageError(f"{spec}: --stream reads Hub repos; give org/name[@revision]")
    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"{spec}: --stream reads from the Hub but HF_HUB_OFFLINE=1 is set "
                         "(unset it, or merge from the local cache without --stream)")
    repo = m.group("repo")
    quiet_progress()
    with hub_errors(str(spec)):
        info = HfApi(endpoint=endpoint()).model_info(repo, revision=m.group("revision"),
                                                     files_metadata=True)
        sha = info.sha
        root = Path(snapshot_download(repo, revision=sha, allow_patterns=SMALL_FILES,
                                      endpoint=endpoint()))
    remote = {s.rfilename: s for s in info.siblings or [] if "/" not in s.rfilename}
    name = f"{repo}@{sha[:8]}"
    weight_map = None
    if INDEX_NAME in remote:
        weight_map = read_index(root / INDEX_NAME)
        names = list(dict.fromkeys(weight_map.values()))
    elif SINGLE_NAME in remote:
        names = [SINGLE_NAME]
    else:
        names = [n for n in remote if n.endswith(".safetensors")]
        if len(names) != 1:
            raise FormatError(f"{name}: {len(names)} .safetensors files and no {INDEX_NAME}: "
                              "--stream needs safetensors weights")
    files = []
    for n in names:
        sibling = remote.get(n)
        if sibling is None:
            raise FormatError(f"{name}: {INDEX_NAME} names shard {n!r}, which the repo lacks")
        lfs = sibling.lfs
        files.append(InputFile("hub", f"{HUB_SCHEME}{repo}/{n}", int(sibling.size), sha,
                               lfs.sha256 if lfs is not None else None))
    headers = [parse_header(f, _read_prefix(f), f.size) for f in files]
    return assemble_checkpoint(root, name, headers, weight_map, INDEX_NAME)


def quiet_progress() -> None:
    """huggingface_hub's own progress bars off: a streamed merge shows one bar of its own."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def _read_prefix(file: InputFile) -> bytes:
    """The 8-byte length and the JSON header of a Hub file (two small range requests)."""
    head = bytearray(min(8, file.size))
    fetch_range(file, 0, memoryview(head))
    if len(head) == 8:
        n = int.from_bytes(head, "little")
        if n <= MAX_HEADER_BYTES and 8 + n <= file.size:
            body = bytearray(n)
            fetch_range(file, 8, memoryview(body))
            head += body
    return bytes(head)


def _url(file: InputFile) -> str:
    from huggingface_hub import hf_hub_url

    repo, path = split_id(file)
    return hf_hub_url(repo, path, revision=file.version, endpoint=endpoint())


def fetch_range(file: InputFile, offset: int, view: memoryview, url: str | None = None,
           stats: "Stats | None" = None) -> None:
    """Fill ``view`` with the bytes at ``offset``; retried from the byte already received.

    Raises:
        HubError: after ``RETRIES`` retries, or at once for an answer a retry cannot change
            (401, 403, 404): one line naming repo, file and offset.
    """
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session

    url = url or _url(file)
    repo, path = split_id(file)
    headers = build_hf_headers()
    timeout = httpx2.Timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    got, failures, delay = 0, 0, 0.5
    while got < len(view):
        start = offset + got
        headers["Range"] = f"bytes={start}-{offset + len(view) - 1}"
        problem = None
        try:
            with get_session().stream("GET", url, headers=headers, timeout=timeout) as r:
                if r.status_code in (401, 403, 404, 416):
                    raise HubError(f"{repo}: {path}: the Hub answered {r.status_code} to a read "
                                   f"from byte {start}" + (" (check HF_TOKEN)" if r.status_code in (401, 403) else ""))
                if r.status_code != 206 and not (r.status_code == 200 and start == 0
                                                 and len(view) == file.size):
                    problem = f"HTTP {r.status_code}"
                else:
                    for chunk in r.iter_bytes():
                        n = min(len(chunk), len(view) - got)
                        view[got:got + n] = chunk[:n]
                        got += n
                        if stats is not None:
                            stats.add(n)
                    if offset + got < offset + len(view):
                        problem = f"the response ended after {got} of {len(view)} bytes"
        except (httpx2.TransportError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if problem is None:
            return
        if offset + got > start:  # progress: the next failure starts a fresh count
            failures, delay = 0, 0.5
        failures += 1
        if failures > RETRIES:
            raise HubError(f"{repo}: {path}: cannot read from byte {offset + got} after "
                           f"{RETRIES} retries ({problem}); run the command again to resume")
        log.info("%s: %s: retrying from byte %d in %.1f s (%s)", repo, path, offset + got,
                 delay, problem)
        time.sleep(delay)
        delay = min(delay * 2, 8.0)


class Stats:
    """Bytes received from the Hub, for progress and reports (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.downloaded = 0
        self.refetched = 0

    def add(self, n: int, refetch: bool = False) -> None:
        with self._lock:
            self.downloaded += n
            if refetch:
                self.refetched += n


STATS = Stats()


class HubFile:
    """One Hub file streaming front to back through a window of reused buffers.

    Args:
        file: a ``hub`` input file.
        range_bytes, in_flight, window: request size, requests at once, ranges held.
        start: the first byte anyone will read. From 0, the stream hashes the whole file and
            :meth:`finish` checks its sha256; from further on (a Ray task that computes one shard
            reads only that shard's part) it does not, and the digest is checked elsewhere.
    """

    def __init__(self, file: InputFile, range_bytes: int = RANGE_BYTES, in_flight: int = IN_FLIGHT,
                 window: int = WINDOW, start: int = 0):
        self.file, self.size = file, file.size
        self._url = _url(file)
        self._range = range_bytes
        self._window = max(window, in_flight + 1)
        self._cond = threading.Condition()
        self._ready: dict[int, mmap.mmap] = {}  # range index -> its bytes, fetched
        self._consumed: dict[int, int] = {}  # range index -> bytes copied out so far
        self._copying: dict[int, int] = {}  # range index -> readers copying out of it now
        self._hashes = start == 0
        # Range i holds bytes [base + i * range_bytes, ...): a stream from ``start`` fetches
        # nothing before it.
        self._base = start
        self._count = -(-(file.size - start) // range_bytes)
        self._next = 0  # next range to fetch
        self._low = 0  # ranges below this were dropped
        self._hashed = 0  # ranges hashed (or, not hashing, passed on), in order
        self._hashing = False
        self._sha = hashlib.sha256()
        self._free: list[mmap.mmap] = []
        self._error: BaseException | None = None
        self._closed = False
        self.verified = False
        self._workers = [threading.Thread(target=self._fetch_loop, daemon=True,
                                          name=f"expo-hub-{i}") for i in range(in_flight)]
        for w in self._workers:
            w.start()

    def _span(self, i: int) -> int:
        return min(self._range, self.size - self._base - i * self._range)

    # -- the fetchers ---------------------------------------------------------------------
    def _fetch_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._error is None and (
                        self._next >= self._count or self._next >= self._low + self._window):
                    self._cond.wait()
                if self._closed or self._error is not None:
                    return
                i, self._next = self._next, self._next + 1
                # An anonymous map of its own, not the heap: unmapped when dropped, so a file
                # read through gives its memory back to the system at once.
                buf = self._free.pop() if self._free else mmap.mmap(-1, self._range)
            try:
                fetch_range(self.file, self._base + i * self._range, memoryview(buf)[:self._span(i)],
                            self._url, STATS)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader, who raises it
                with self._cond:
                    self._error = self._error or exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[i] = buf
                if i == 0 and self._hashes:
                    self._credit_header(buf)
                hash_now = not self._hashing and self._hashed in self._ready
                self._hashing = self._hashing or hash_now
                self._cond.notify_all()
            if hash_now:
                self._hash_ready()

    def _credit_header(self, first: mmap.mmap) -> None:
        """Count the header's bytes as copied out: no reader asks for them (lock held)."""
        end = min(self.size, 8 + int.from_bytes(first[:8], "little")) if self.size >= 8 else self.size
        for j in range(0, -(-end // self._range)):
            self._consumed[j] = self._consumed.get(j, 0) + min(end, (j + 1) * self._range) - j * self._range

    def _hash_ready(self) -> None:
        """Hash every range that is ready in file order (one thread at a time)."""
        while True:
            with self._cond:
                buf = self._ready.get(self._hashed)
                if buf is None or self._closed:
                    self._hashing = False
                    self._cond.notify_all()
                    return
                i = self._hashed
            if self._hashes:
                self._sha.update(memoryview(buf)[:self._span(i)])
            with self._cond:
                self._hashed += 1
                if self._hashed == self._count and self._hashes:
                    self._check_digest()
                self._drop_consumed()
                self._cond.notify_all()

    def _check_digest(self) -> None:
        want = self.file.sha256
        got = self._sha.hexdigest()
        if want is not None and got != want:
            repo, path = split_id(self.file)
            self._error = self._error or FormatError(
                f"{repo}: {path}: the bytes read do not match the file's sha256 on the Hub "
                f"({got[:12]}... instead of {want[:12]}...): corrupted in transfer or on the "
                "server; nothing was published")
        else:
            self.verified = True

    def _drop_consumed(self) -> None:
        """Free the lowest ranges once hashed and copied out in full (lock held)."""
        while self._low < self._hashed and self._consumed.get(self._low, 0) >= self._span(self._low):
            self._drop_low()

    def _drop_low(self) -> None:
        buf = self._ready.pop(self._low, None)
        self._consumed.pop(self._low, None)
        # A buffer someone still copies out of is left to them (and the garbage collector).
        if buf is not None and not self._copying.get(self._low) and len(self._free) < self._window:
            self._free.append(buf)
        self._low += 1
        if self._low >= self._count:
            self._free.clear()  # read through: this file holds no memory any more

    # -- the reader -------------------------------------------------------------------------
    def read_into(self, offset: int, buffer: np.ndarray) -> None:
        """Fill ``buffer`` with the file's bytes at ``offset`` (from any thread)."""
        view = memoryview(buffer.reshape(-1).view(np.uint8))
        end = offset + view.nbytes
        if end > self.size:
            raise FormatError(f"{self.file}: ends at byte {self.size}, but bytes up to {end} "
                              "were asked for")
        pos = offset
        while pos < end:
            if pos < self._base:  # before where this stream begins: on its own
                hi = min(end, self._base)
                fetch_range(self.file, pos, view[pos - offset:hi - offset], self._url, None)
                STATS.add(hi - pos, refetch=True)
                pos = hi
                continue
            i = (pos - self._base) // self._range
            lo = self._base + i * self._range
            hi = min(end, lo + self._range)
            part = view[pos - offset:hi - offset]
            if not self._copy_from_window(i, pos - lo, part):
                fetch_range(self.file, pos, part, self._url, None)  # behind the window: on its own
                STATS.add(len(part), refetch=True)
            pos = hi

    def _copy_from_window(self, i: int, lo: int, part: memoryview) -> bool:
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise FormatError(f"{self.file}: read after the merge closed its inputs")
                if i < self._low:
                    return False
                buf = self._ready.get(i)
                if buf is not None:
                    break
                if i >= self._low + self._window and self._low < self._hashed:
                    self._drop_low()  # wanted far ahead: slide (the dropped range is hashed)
                    self._cond.notify_all()
                    continue
                self._cond.wait()
            self._copying[i] = self._copying.get(i, 0) + 1
        part[:] = memoryview(buf)[lo:lo + len(part)]
        with self._cond:
            self._copying[i] -= 1
            if not self._copying[i]:
                del self._copying[i]
            self._consumed[i] = self._consumed.get(i, 0) + len(part)
            self._drop_consumed()
            self._cond.notify_all()
        return True

    def prefetch(self, offset: int, length: int) -> None:
        """The stream reads ahead on its own."""

    def release(self, offset: int, length: int) -> None:
        """Ranges are freed as they are copied out."""

    def finish(self) -> None:
        """Read the rest of the file (dropping what no one asked for) and check its sha256.

        Raises:
            FormatError: the digest differs; HubError: the rest cannot be read.
        """
        if not self._hashes:
            raise ValueError(f"{self.file}: a stream that starts past byte 0 checks no digest")
        with self._cond:
            while not (self._hashed == self._count or self._error is not None):
                if self._low < self._hashed:
                    self._drop_low()
                    self._cond.notify_all()
                    continue
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """A task is done with the file; the merge's :class:`Streams` owns it (and shuts it)."""

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._free.clear()
            self._cond.notify_all()


class Streams:
    """Every Hub file a merge opens, shared by its shard tasks so each file streams once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._files: dict[InputFile, HubFile] = {}
        self._starts: dict[InputFile, int] = {}

    def start_at(self, starts: dict[InputFile, int]) -> None:
        """Streams opened from now on begin at these offsets (unhashed) instead of byte 0."""
        with self._lock:
            self._starts = dict(starts)

    def open(self, file: InputFile) -> HubFile:
        with self._lock:
            f = self._files.get(file)
            if f is None:
                f = self._files[file] = HubFile(file, start=self._starts.get(file, 0))
            return f

    def verified(self, file: InputFile) -> bool:
        """Whether this process has streamed ``file`` end to end and found its sha256 right."""
        with self._lock:
            f = self._files.get(file)
        return f is not None and f.verified

    def finish(self, files) -> None:
        """Stream what remains of ``files`` (opening those no task read) and check each digest."""
        for file in files:
            self.open(file).finish()

    def close(self) -> None:
        with self._lock:
            files, self._files, self._starts = list(self._files.values()), {}, {}
        for f in files:
            f.shutdown()


STREAMS = Streams()


def check_digest(file: InputFile) -> None:
    """Stream all of ``file`` and check its sha256 (a Ray task does this for each input).

    Raises:
        FormatError: the digest differs; HubError: the file cannot be read.
    """
    stream = HubFile(file)
    try:
        stream.finish()
    finally:
        stream.shutdown()
