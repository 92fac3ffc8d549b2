"""Run a command and sample its peak anonymous memory (RssAnon from /proc/PID/status).

VmHWM would count the memory-mapped input pages too, which are file-backed page cache the
kernel can drop at any time; RssAnon is the memory a merge really needs for itself.
"""

from __future__ import annotations

import subprocess
import time


def rss_anon_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


TIMED_OUT = -1000


def run_sampled(cmd: list[str], interval: float = 0.005, timeout: float | None = None,
                **popen) -> tuple[int, int, float]:
    """(exit code, peak RssAnon in bytes, wall seconds) of ``cmd``.

    Past ``timeout`` seconds the command is killed and the exit code is TIMED_OUT: a process
    squeezed into too small a memory cgroup can thrash on page cache for a very long time
    instead of being killed, and that counts as not completing.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, rss_anon_bytes(proc.pid))
        if timeout is not None and time.perf_counter() - start > timeout:
            proc.kill()
            proc.wait()
            return TIMED_OUT, peak, time.perf_counter() - start
        time.sleep(interval)
    return proc.returncode, peak, time.perf_counter() - start
