"""Writing outputs: a staging directory that becomes the output only when complete.

Until :meth:`Staging.commit`, the output path holds nothing: shards are written into a hidden
sibling directory ``.<name>.expo-partial``; the index, config and recipe go in last, everything
is fsynced, and one ``rename`` publishes the result. A crash leaves only the hidden directory,
which the same command, run again, resumes from (see format/manifest.py).

Two rules keep a user's data safe:

- One writer per output: a run holds an exclusive lock on ``.<name>.expo-lock`` (beside the
  staging directory, which is reset and renamed) from before it touches anything until it has
  published or given up; a second run into the same output refuses and names the first.
- ``overwrite`` replaces only what expo-stream wrote: every published directory lists its files
  in ``.expo-stream-files.json``; an existing output without that list, with a file it does
  not list, or holding (or held by) an input is refused, never removed.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np

from .. import system
from ..errors import OutputError, UsageError, os_problem
from .safetensors import encode_header

SYNC_EVERY_BYTES = 64 * 2**20  # flush dirty pages in steps so they do not pile up
WRITTEN_LIST = ".expo-stream-files.json"  # what a published directory holds, as written


def staging_path(out: Path) -> Path:
    return out.parent / f".{out.name}.expo-partial"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.expo-lock"


def unique_temp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process or thread will choose."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def replace_file(path: Path, data: bytes, durable: bool = False) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, renamed over it.

    ``durable`` syncs the data first, so that after a crash the file holds the old bytes or the
    new ones (the manifest needs that; a resumable output file can be rewritten instead).
    """
    path = Path(path)
    tmp = unique_temp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                system.durable_sync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OutputLock:
    """An exclusive, non-blocking lock on one output path, held by this process until released.

    The lock file holds the owner's pid, so a refused run can name it. The kernel drops the lock
    when the process dies (SIGKILL included), so a stale file never blocks a later run.

    Raises:
        UsageError: another process holds the lock.
    """

    def __init__(self, out: Path):
        self.path = lock_path(out)
        self._fd: int | None = None
        for _ in range(8):
            fd = system.open_for_update(self.path)
            if not system.try_lock(fd):
                try:
                    owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                finally:
                    os.close(fd)
                raise UsageError(f"{out}: another expo-stream run (pid {owner}) is writing this "
                                 "output; wait for it to finish or stop it")
            # The previous owner may have unlinked the file between our open and our lock: then
            # we hold a lock nobody else can see. Take the file that is there now instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                system.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return
            os.close(fd)
        raise OutputError(f"{self.path}: cannot take the output lock (the file keeps changing)")

    def release(self) -> None:
        if self._fd is None:
            return
        if system.CAN_UNLINK_OPEN_FILES:
            try:
                os.unlink(self.path)  # while still locked, so no one locks the unlinked file
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = None


def check_output(out: Path, inputs: list[Path] = (), overwrite: bool = False) -> None:
    """Every check a run makes before it writes: what :func:`check_replaceable` checks, and a
    parent directory that exists and is writable (``--dry-run`` calls this alone).

    Raises:
        UsageError, OutputError.
    """
    out = Path(out).absolute()
    check_replaceable(out, inputs, overwrite)
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"{parent}: output's parent directory does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: not writable")


def check_replaceable(out: Path, inputs: list[Path] = (), overwrite: bool = False) -> None:
    """Refuse an output that would clash with an input or destroy what expo-stream did not write.

    Raises:
        UsageError: ``out`` is, holds or lies inside an input; ``out`` exists and ``overwrite``
            is off; or ``out`` exists and is not a directory that expo-stream wrote, whole.
    """
    out = Path(out).absolute()
    check_disjoint(out, inputs)
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise UsageError(f"{out}: already exists (use --overwrite to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory expo-stream wrote; not replacing it")
    stray = _not_written_by_us(out)
    if stray is not None:
        raise UsageError(f"{out}: {stray}; --overwrite replaces only what expo-stream wrote, "
                         "so move it away yourself")


def check_disjoint(out: Path, inputs: list[Path]) -> None:
    """Raise UsageError if ``out`` is an input, lies inside one, or holds one."""
    real = Path(out).resolve()
    for given in inputs:
        root = Path(given).resolve()
        if real == root or root in real.parents:
            raise UsageError(f"{out}: output would be inside the input {given}")
        if real in root.parents:
            raise UsageError(f"{out}: output would replace a directory holding the input {given}")


def _not_written_by_us(directory: Path) -> str | None:
    """None if every file under ``directory`` is listed in its written-files list (or it is
    empty), else what is wrong."""
    present = sorted(p.relative_to(directory).as_posix()
                     for p in directory.rglob("*") if not p.is_dir() or p.is_symlink())
    if not present:
        return None
    try:
        listed = set(json.loads((directory / WRITTEN_LIST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"has no valid {WRITTEN_LIST} (not an expo-stream output)"
    for name in present:
        if name != WRITTEN_LIST and name not in listed:
            return f"holds {name!r}, which expo-stream did not write"
    return None


class ShardFile:
    """One output shard, opened for positional writes from many threads.

    The file is sized up front (``posix_fallocate``) so a full disk fails at once; chunks are
    written with ``pwrite`` at offsets the plan fixed, and every ``SYNC_EVERY_BYTES`` the file is
    synced and its clean pages dropped from the page cache.
    """

    def __init__(self, path: Path, header: bytes, size: int):
        self.path = path
        self._lock = threading.Lock()
        self._unsynced = 0
        try:
            self._fd = system.open_for_writing(path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot create ({exc.strerror})") from None
        try:
            if size:
                system.reserve(self._fd, size, path)
            self.pwrite(header, 0)
        except OSError as exc:
            os.close(self._fd)
            raise OutputError(f"{path}: cannot reserve {size} bytes ({os_problem(exc)})") from None
        except BaseException:
            os.close(self._fd)
            raise

    def pwrite(self, data: bytes | np.ndarray, offset: int) -> None:
        # A uint8 view: memoryview cannot export bf16/f16 arrays with their own format.
        view = memoryview(data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data)
        size = view.nbytes
        try:
            while view.nbytes:
                n = system.pwrite(self._fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise OutputError(f"{self.path}: write failed at byte {offset} ({os_problem(exc)})") from None
        with self._lock:
            self._unsynced += size
            flush = self._unsynced >= SYNC_EVERY_BYTES
            if flush:
                self._unsynced = 0
        if flush:
            self._sync_and_drop()

    def _sync_and_drop(self) -> None:
        try:
            system.data_sync(self._fd)
        except OSError as exc:
            raise OutputError(f"{self.path}: sync failed ({exc.strerror})") from None
        system.advise_file(self._fd, "DONTNEED", 0, 0)  # synced pages: let the cache drop them

    def close(self) -> None:
        try:
            system.durable_sync(self._fd)
        except OSError as exc:
            raise OutputError(f"{self.path}: sync failed ({exc.strerror})") from None
        finally:
            os.close(self._fd)


class Staging:
    """The hidden directory a merge writes into, published by :meth:`commit`.

    Args:
        out: the final output directory.
        inputs: input checkpoint roots; an output inside one of them is refused.
        overwrite: replace an existing ``out`` at commit time.
    """

    def __init__(self, out: Path, inputs: list[Path], overwrite: bool = False):
        self.out = Path(out).absolute()
        self.inputs = list(inputs)
        check_output(self.out, self.inputs, overwrite)
        self.overwrite = overwrite
        self.path = staging_path(self.out)
        self._lock = OutputLock(self.out)
        try:
            # Checked again under the lock: another run may have published meanwhile.
            check_replaceable(self.out, self.inputs, overwrite)
            # An existing staging directory is an interrupted run's: the caller decides whether
            # its contents can be reused (manifest) or must go (reset).
            try:
                self.path.mkdir(exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create ({exc.strerror})") from None
            for stale in self.path.rglob(".*.tmp"):  # a killed run's half-written temporaries
                stale.unlink()
        except BaseException:
            self._lock.release()
            raise

    def reset(self) -> None:
        """Empty the staging directory."""
        shutil.rmtree(self.path)
        self.path.mkdir()

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode("utf-8"))

    def write_bytes(self, relative: str, data: bytes) -> None:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "wb") as f:
                f.write(data)
                f.flush()
                system.durable_sync(f.fileno())
        except OSError as exc:
            raise OutputError(f"{target}: write failed ({os_problem(exc)})") from None

    def write_json(self, relative: str, obj: object) -> None:
        self.write_text(relative, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def commit(self) -> Path:
        """Publish the staging directory as ``out`` (atomically, by rename); releases the lock."""
        files = sorted(p.relative_to(self.path).as_posix()
                       for p in self.path.rglob("*") if not p.is_dir())
        self.write_json(WRITTEN_LIST, {"tool": "expo-stream", "files": files})
        _fsync_tree(self.path)
        if os.path.lexists(self.out):
            check_replaceable(self.out, self.inputs, self.overwrite)  # changed during the run?
        old = unique_temp(self.out)
        moved = system.replace_directory(self.path, self.out, old)
        system.sync_directory(self.out.parent)
        self.release()
        if moved:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        """Remove everything written so far; releases the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let another run write this output (the staging directory stays for a resume)."""
        self._lock.release()


def publish(out: Path, write, *, inputs=(), overwrite: bool = False) -> Path:
    """Write a directory with ``write(path)`` into a fresh staging directory, then publish it.

    Nothing is left at ``out`` or beside it when ``write`` raises. Raises what :class:`Staging`
    raises for an existing ``out`` (without ``overwrite``) or an unwritable parent.
    """
    staging = Staging(Path(out), list(inputs), overwrite)
    try:
        staging.reset()
        write(staging.path)
        return staging.commit()
    except BaseException:
        staging.abort()
        raise


def _fsync_tree(root: Path) -> None:
    for dirpath, _, _ in os.walk(root):
        system.sync_directory(Path(dirpath))


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write whole NumPy arrays as one safetensors file (for demos, tests and benchmarks).

    ``tensors`` maps names to arrays whose dtypes are in ``format.dtypes.NUMPY_DTYPES``.
    """
    from .dtypes import NUMPY_DTYPES

    by_numpy = {dt: name for name, dt in NUMPY_DTYPES.items()}
    header = encode_header(((n, by_numpy[a.dtype], a.shape) for n, a in tensors.items()), metadata)
    with open(path, "wb") as f:
        f.write(header)
        for arr in tensors.values():
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))


def save_checkpoint(directory: Path, tensors: dict, max_shard_bytes: int | None = None,
                    config: dict | None = None) -> None:
    """Write a checkpoint directory: one ``model.safetensors``, or shards plus an index."""
    from .checkpoint import INDEX_NAME, group_shards, shard_name

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    groups = group_shards([tensors[n].nbytes for n in names], max_shard_bytes)
    weight_map = {}
    for i, group in enumerate(groups):
        filename = shard_name(i, len(groups))
        write_safetensors(directory / filename, {names[k]: tensors[names[k]] for k in group})
        weight_map.update({names[k]: filename for k in group})
    if len(groups) > 1:
        total = sum(a.nbytes for a in tensors.values())
        (directory / INDEX_NAME).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2))
