"""Run Python as if on macOS or Windows, for expo-stream's tests (tests/test_other_systems.py).

With ``tests/os_sim`` on ``PYTHONPATH`` and ``EXPO_SIMULATE_OS=macos`` or ``windows``, this file
is imported at interpreter start-up (before any project code, in every child process that
inherits the environment) and removes what that system's Python lacks:

- macOS: ``os.posix_fallocate``, ``os.fdatasync``, ``os.posix_fadvise``.
- Windows: those, and ``os.pwrite``/``os.pread``, the ``fcntl`` module, ``mmap``'s ``MADV_*``
  advice; opening a directory fails; renaming onto an existing directory, or a directory in
  which this process holds a file open, fails; ``os.O_BINARY`` exists. A stand-in ``msvcrt.locking`` locks byte ranges, as Windows does, on top of the real
  ``fcntl`` taken before it is hidden.
"""

import os
import sys

SYSTEM = os.environ.get("EXPO_SIMULATE_OS")


def _remove(module, *names):
    for name in names:
        if hasattr(module, name):
            delattr(module, name)


def _macos():
    _remove(os, "posix_fallocate", "fdatasync", "posix_fadvise",
            *[n for n in dir(os) if n.startswith("POSIX_FADV_")])


def _windows():
    import errno
    import mmap
    import stat
    import types

    import fcntl as real_fcntl
    # These decide "am I on Windows?" by whether msvcrt imports: settle them before it does.
    import getpass  # noqa: F401
    import subprocess  # noqa: F401

    _macos()
    _remove(os, "pwrite", "pread", "pwritev", "preadv")
    _remove(mmap, *[n for n in dir(mmap) if n.startswith("MADV_")])
    sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError
    os.O_BINARY = 0x8000

    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK = 0, 1, 2

    def locking(fd, mode, nbytes):
        start = os.lseek(fd, 0, os.SEEK_CUR)
        if mode == msvcrt.LK_UNLCK:
            real_fcntl.lockf(fd, real_fcntl.LOCK_UN, nbytes, start)
            return
        flags = real_fcntl.LOCK_EX | (real_fcntl.LOCK_NB if mode == msvcrt.LK_NBLCK else 0)
        try:
            real_fcntl.lockf(fd, flags, nbytes, start)
        except OSError:
            raise PermissionError(errno.EACCES, "Permission denied") from None

    msvcrt.locking = locking
    sys.modules["msvcrt"] = msvcrt

    real_open, real_rename = os.open, os.rename

    def win_open(path, flags, mode=0o777, *, dir_fd=None):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def open_inside(directory):
        """Files this process holds open under ``directory`` (Linux's /proc tells)."""
        prefix = os.path.realpath(directory) + os.sep
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                found.append(target)
        return found

    def win_rename(src, dst, **kwargs):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "Cannot create a file when that file already exists",
                                  str(dst))
        if os.path.isdir(src) and open_inside(src):
            raise PermissionError(errno.EACCES, "The process cannot access the file because it "
                                  f"is being used by another process: {open_inside(src)[0]}", str(src))
        return real_rename(src, dst, **kwargs)

    real_replace = os.replace

    def win_replace(src, dst, **kwargs):
        if os.path.isdir(dst) and not stat.S_ISLNK(os.lstat(dst).st_mode):
            raise PermissionError(errno.EACCES, "Access is denied", str(dst))
        return real_replace(src, dst, **kwargs)

    os.open, os.rename, os.replace = win_open, win_rename, win_replace


if SYSTEM == "macos":
    _macos()
elif SYSTEM == "windows":
    _windows()
elif SYSTEM:
    raise SystemExit(f"EXPO_SIMULATE_OS={SYSTEM!r}: use macos or windows")
