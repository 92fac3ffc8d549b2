"""The file-system calls that differ between operating systems, in one place.

Linux has every call the engine wants; macOS lacks ``posix_fallocate``, ``fdatasync`` and
``posix_fadvise``; Windows also lacks ``pwrite``/``pread``, ``fcntl``, ``madvise`` and opening a
directory, and opens files in text mode unless asked for binary. Each function here uses the
best call the running Python has, found by looking for the call itself (not by the platform's
name), and says what it does without it. Nothing else in expo-stream calls these directly.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import sys
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere but Windows
    msvcrt = None

# Text mode would turn b"\n" into b"\r\n" on Windows; elsewhere the flag does not exist.
_BINARY = getattr(os, "O_BINARY", 0)
_SEEK_LOCK = threading.Lock()  # positional writes emulated with lseek + write


def open_for_writing(path: Path) -> int:
    """A new (truncated) file for positional writes, in binary mode."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _BINARY, 0o644)


def open_for_reading(path: Path) -> int:
    return os.open(path, os.O_RDONLY | _BINARY)


def open_for_update(path: Path) -> int:
    """An existing or new file for reading and writing, not truncated."""
    return os.open(path, os.O_RDWR | os.O_CREAT | _BINARY, 0o644)


def reserve(fd: int, size: int, path: Path) -> None:
    """Give the file ``size`` bytes up front, so that a full disk fails now, not mid-merge.

    ``posix_fallocate`` allocates the blocks. Without it (macOS, Windows) the free space is
    checked and the file extended: a full disk is still refused here, but space other writers
    take meanwhile is not held for us.

    Raises:
        OSError: ``ENOSPC`` (or what the system call raised).
    """
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
        return
    if shutil.disk_usage(Path(path).parent).free < size:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    os.ftruncate(fd, size)


def pwrite(fd: int, data, offset: int) -> int:
    """Write at ``offset`` without moving a shared file position (safe from many threads)."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` without a shared file position; bytes read."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    if hasattr(os, "pread"):
        data = os.pread(fd, view.nbytes, offset)
    else:
        with _SEEK_LOCK:
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, view.nbytes)
    view[:len(data)] = data
    return len(data)


def file_size(fd: int) -> int:
    return os.fstat(fd).st_size


def close(fd: int) -> None:
    os.close(fd)


def advise_file(fd: int, advice: str, offset: int, length: int) -> None:
    """``posix_fadvise(POSIX_FADV_<advice>)``; a no-op where the system has none."""
    flag = getattr(os, f"POSIX_FADV_{advice}", None)
    if flag is not None and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, flag)


def data_sync(fd: int) -> None:
    """Flush written data (metadata as needed to read it back): a pacing flush, not a promise."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def durable_sync(fd: int) -> None:
    """Make the file's data durable: on macOS ``fsync`` only reaches the drive's cache, so
    ``F_FULLFSYNC`` is asked for where it exists."""
    if fcntl is not None and hasattr(fcntl, "F_FULLFSYNC"):
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:  # file systems that do not support it: plain fsync below
            pass
    os.fsync(fd)


def sync_directory(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable; a no-op where a directory cannot
    be opened (Windows, where a rename is durable once it returns)."""
    try:
        fd = os.open(path, os.O_RDONLY | _BINARY)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def advise(mapped: mmap.mmap, advice: str, start: int, length: int) -> None:
    """``madvise(MADV_<advice>)`` on a range of a map; a no-op where absent (Windows)."""
    flag = getattr(mmap, f"MADV_{advice}", None)
    if flag is not None and hasattr(mapped, "madvise"):
        mapped.madvise(flag, start, length)


# ---- an exclusive lock on a file, released when the process dies ----------------------------

# Windows locks byte ranges, and a reader cannot read a locked byte: lock one far past the pid.
_LOCK_BYTE = 2**30
# A file that is open cannot be deleted on Windows; there the lock file stays (it is tiny).
CAN_UNLINK_OPEN_FILES = fcntl is not None


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting; False if another process has it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    raise OSError(errno.ENOSYS, f"no file locking on this system ({sys.platform})")


def replace_directory(src: Path, dst: Path, aside: Path) -> bool:
    """Move ``src`` to ``dst``, moving an existing ``dst`` to ``aside`` first (Windows cannot
    rename over a directory). Returns whether something was moved aside (the caller removes it
    once the new directory is durable)."""
    moved = os.path.lexists(dst)
    if moved:
        os.rename(dst, aside)
    os.rename(src, dst)
    return moved
