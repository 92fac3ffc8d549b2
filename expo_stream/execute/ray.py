"""The Ray executor: one Ray task per output shard, on a cluster that shares the output's storage.

Each task runs :func:`~.shard.compute_shard` on whichever node Ray picks: it reads the inputs and
writes its shard into the staging directory at the same paths as on the driver, so the inputs and
the output's parent directory must be on storage every node mounts at the same path (NFS, Lustre,
a mounted bucket). That is checked before any work: a probe task on every node writes a file into
the staging directory, and the driver must read each one back. The plan is built once on the
driver and shipped once (``ray.put``); tasks never re-read headers or re-decide α, so the bytes are
those of the threaded executor. The manifest stays on the driver, which records each shard as its
task returns, so resume works as for a local run.

``ray`` is imported only when this executor runs (``pip install expo-stream[ray]``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from ..errors import BackendUnavailableError, ExpoStreamError, UsageError
from .shard import ShardTask, compute_shard

log = logging.getLogger(__name__)

PROBE_PREFIX = ".expo-ray-probe-"
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20  # a local Ray started for one run holds only the plan
PROGRESS_EVERY_BYTES = 64 * 2**20
PROBE_TIMEOUT_S = 120  # generous: a node may have to start a worker process first  # a task reports written bytes to the driver in steps this big


class RayExecutor:
    """Runs shard tasks on a Ray cluster.

    Args:
        address: the cluster (``ray://...`` or ``HOST:PORT`` or ``auto``); default
            ``RAY_ADDRESS``, else a local Ray started for this run and stopped after it. When
            Ray is already initialised in this process, that connection is used as it is.
        max_retries: re-runs of a task whose worker or node died (a rerun rewrites its shard).

    After :meth:`run`, ``nodes`` maps each computed shard index to the Ray node id that wrote it.

    Raises:
        BackendUnavailableError: ``ray`` is not installed.

    Example:
        >>> write_plan(plan, "out/", executor=RayExecutor("head:6379"))  # doctest: +SKIP
    """

    def __init__(self, address: str | None = None, *, max_retries: int = 3):
        import_ray()  # without Ray, say so before a merge opens its staging directory
        self.address = address
        self.max_retries = max_retries
        self.nodes: dict[int, str] = {}
        self._checked: set = set()  # streamed inputs whose sha256 a task has checked

    def run(self, tasks: Sequence[ShardTask],
            on_shard_done: Callable[[int, tuple[dict, ...]], None],
            progress: Callable[[int], None] | None = None) -> None:
        """Run ``tasks`` as Ray tasks; see :class:`~.shard.Executor`.

        Raises:
            UsageError: the cluster cannot be reached, has no CPUs, or does not see the staging
                directory (or an input) at the same path as the driver.
            ExpoStreamError: a task's own error (naming file and tensor), or a task lost more
                than ``max_retries`` times.
        """
        if not tasks:
            return
        ray = import_ray()
        started = connect(ray, self.address)
        plan = tasks[0].plan
        try:
            cpus = _node_cpus(ray)
            if not cpus:
                raise UsageError("the Ray cluster has no node with a CPU to run merge tasks on")
            if tasks[0].upload_to is None:
                _check_shared(ray, tasks[0], list(cpus))
            elif any(f.source == "local" for ck in (plan.sft, plan.dpo) for f in ck.files):
                raise UsageError("Ray tasks that push to the Hub read their inputs from the Hub: "
                                 "name both inputs by repo id with --stream, or give --out on "
                                 "storage every node shares")
            # Each streamed input's sha256 is checked by a task of its own, alongside.
            streamed = [f for ck in (plan.sft, plan.dpo) for f in ck.files if f.source == "hub"]
            digests = {ray.remote(_check_digest_remote).options(
                num_cpus=0, runtime_env=hub_env()).remote(f): f for f in streamed}
            self._run(ray, tasks, min(tasks[0].threads, max(cpus.values())), on_shard_done,
                      progress)
            self._wait_digests(ray, digests)
        finally:
            if started:
                ray.shutdown()

    def verified(self, file) -> bool:
        return file.source != "hub" or file in self._checked

    def check_inputs(self, files) -> None:
        """Check the streamed inputs a run's tasks did not check (a resumed run with no shard
        left to compute), each in a Ray task."""
        todo = [f for f in files if f.source == "hub" and f not in self._checked]
        if not todo:
            return
        ray = import_ray()
        started = connect(ray, self.address)
        try:
            self._wait_digests(ray, {ray.remote(_check_digest_remote).options(
                num_cpus=0, runtime_env=hub_env()).remote(f): f for f in todo})
        finally:
            if started:
                ray.shutdown()

    def _wait_digests(self, ray, digests: dict) -> None:
        from ray.exceptions import RayTaskError

        try:
            for ref, file in digests.items():
                try:
                    ray.get(ref)
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, ExpoStreamError):
                        raise cause from None
                    raise ExpoStreamError(f"{file}: the Ray task checking its sha256 failed "
                                          f"({_first_line(cause or exc)})") from None
                self._checked.add(file)
        except BaseException:
            _cancel(ray, list(digests))
            raise

    def _run(self, ray, tasks, num_cpus, on_shard_done, progress) -> None:
        from ray.exceptions import RayError, RayTaskError

        counter = _Progress.options(num_cpus=0).remote() if progress is not None else None
        remote = ray.remote(_compute_remote).options(
            num_cpus=num_cpus, max_retries=self.max_retries, retry_exceptions=False,
            runtime_env=hub_env())
        plan = ray.put(tasks[0].plan)  # shipped once, not once per task
        pending = {remote.remote(plan, replace(t, plan=None), counter): t for t in tasks}
        log.info("%d shard task(s) on Ray, %d CPU(s) each", len(pending), num_cpus)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if counter is not None:
                    progress(ray.get(counter.take.remote()))
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        records, node = ray.get(ref)
                    except RayTaskError as exc:
                        raise _task_error(exc, task) from None
                    except RayError as exc:  # the worker or its node died, beyond max_retries
                        raise ExpoStreamError(
                            f"{task.shard.filename}: the Ray task writing this shard was lost "
                            f"({type(exc).__name__}) after {self.max_retries} retries; run the "
                            "same command again to resume") from None
                    self.nodes[task.index] = node
                    on_shard_done(task.index, records)
            if counter is not None:
                progress(ray.get(counter.take.remote()))
        except BaseException:
            _cancel(ray, list(pending))
            raise
        finally:
            if counter is not None:
                ray.kill(counter)


def connect(ray, address: str | None) -> bool:
    """Connect to the cluster at ``address`` (default ``RAY_ADDRESS``, else start a local Ray)
    unless this process already is; True if this call did, so the caller must shut it down.

    Raises:
        UsageError: the cluster cannot be reached or started (one line).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers' own output (library progress bars, logs) stays in Ray's log files: what a task
    # has to say comes back as its result or its error.
    kwargs = dict(logging_level=logging.WARNING, configure_logging=False, include_dashboard=False,
                  log_to_driver=False)
    try:
        if address is None:
            log.info("starting a local Ray for this run")
            ray.init(object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "locally"
        raise UsageError(f"cannot start or reach Ray {where}: {_first_line(exc)}") from None
    return True


HUB_SETTINGS = ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_XET", "HF_HUB_DOWNLOAD_TIMEOUT",
                "HF_HUB_ETAG_TIMEOUT")


def hub_env() -> dict | None:
    """The driver's Hub settings for tasks that read or push on the Hub (a worker node's own
    environment may lack them): endpoint, token (a stored login's too) and timeouts."""
    env = {k: os.environ[k] for k in HUB_SETTINGS if os.environ.get(k)}
    if "HF_TOKEN" not in env:
        try:
            from huggingface_hub import get_token
        except ImportError:
            return {"env_vars": env} if env else None
        if token := get_token():
            env["HF_TOKEN"] = token
    return {"env_vars": env} if env else None


def import_ray():
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError(
            "--executor ray needs Ray on every node: pip install 'expo-stream[ray]'") from None
    return ray


def _node_cpus(ray) -> dict[str, float]:
    """Node id -> CPUs, for the live nodes that have any."""
    return {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes()
            if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1}


def _check_shared(ray, task: ShardTask, nodes: list[str]) -> None:
    """Refuse unless every node writes into the staging directory the driver reads, and sees the
    inputs the driver planned from (same paths, same sizes).

    Raises:
        UsageError: naming the first node that does not.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # As the driver sees them now: a file that changed since planning is the executor's to name.
    inputs = {f.id: os.stat(f.id).st_size for ck in (task.plan.sft, task.plan.dpo)
              for f in ck.files if f.source == "local"}
    probe = ray.remote(_probe_remote)
    refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote(str(task.staging), node, inputs) for node in nodes]
    from ray.exceptions import GetTimeoutError

    try:
        answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
    except GetTimeoutError:
        raise UsageError(f"the Ray nodes did not answer a {PROBE_TIMEOUT_S} s probe of "
                         f"{task.staging}: is every node up?") from None
    try:
        for node, (host, problem) in zip(nodes, answers):
            path = task.staging / f"{PROBE_PREFIX}{node}"
            if problem is None:
                try:
                    seen = path.read_text(encoding="utf-8")
                except OSError:
                    seen = None
                if seen != node:
                    problem = (f"wrote {path}, which this machine cannot read: the output is not "
                               "on storage the Ray nodes share")
            if problem is not None:
                raise UsageError(f"Ray node {host} ({node[:8]}): {problem}; put the inputs and "
                                 "--out on a filesystem every node mounts at the same path")
    finally:
        for node in nodes:
            (task.staging / f"{PROBE_PREFIX}{node}").unlink(missing_ok=True)


def _probe_remote(staging: str, node: str, inputs: dict[str, int]) -> tuple[str, str | None]:
    """On one node: write the probe file, look at the inputs; (host, what is wrong or None)."""
    host = socket.gethostname()
    for path, size in inputs.items():
        try:
            found = os.stat(path).st_size
        except OSError as exc:
            return host, f"cannot see the input {path} ({exc.strerror})"
        if found != size:
            return host, f"sees the input {path} with {found} bytes, the driver {size}"
    try:
        with open(Path(staging) / f"{PROBE_PREFIX}{node}", "w", encoding="utf-8") as f:
            f.write(node)
    except OSError as exc:
        return host, f"cannot write into {staging} ({exc.strerror})"
    return host, None


def _check_digest_remote(file) -> None:
    """A Ray task: stream one Hub input end to end and check its sha256."""
    from ..sources.hub import check_digest

    check_digest(file)


def _compute_remote(plan, task: ShardTask, counter) -> tuple[tuple[dict, ...], str]:
    """A Ray task: compute one shard; (its records, the node that wrote it).

    With ``task.upload_to``, the shard is computed into a directory of this worker's own,
    checked, pre-uploaded and deleted, reading only its part of each streamed input, and each
    record carries the uploaded object (``uploaded``: sha256, size) for the driver's commit.
    """
    import ray

    if task.upload_to is not None:
        return _compute_and_upload(plan, task, counter), ray.get_runtime_context().get_node_id()
    unsent = 0

    def report(n: int) -> None:
        nonlocal unsent
        unsent += n
        if unsent >= PROGRESS_EVERY_BYTES:
            counter.add.remote(unsent)
            unsent = 0

    records = compute_shard(replace(task, plan=plan), report if counter is not None else None)
    if counter is not None and unsent:
        ray.get(counter.add.remote(unsent))  # counted before the driver sees this task done
    return records, ray.get_runtime_context().get_node_id()


def _compute_and_upload(plan, task: ShardTask, counter) -> tuple[dict, ...]:
    import shutil
    import tempfile

    from ..sinks.hub import upload_shard
    from ..sources import close_inputs
    from ..sources.hub import STREAMS
    from .verify import check_shard

    shard = plan.shards[task.index]
    starts: dict = {}
    for job in shard.tensors:
        for info in (job.dpo, job.sft):
            if info is not None and info.file.source == "hub":
                starts[info.file] = min(starts.get(info.file, info.start), info.start)
    STREAMS.start_at(starts)  # this shard's part of each input, not the files from byte 0
    own = Path(tempfile.mkdtemp(prefix="expo-shard-"))
    try:
        for sub in task.subdirs:
            (own / sub).mkdir(parents=True, exist_ok=True)
        local = replace(task, plan=None, staging=own, upload_to=None)
        records = _compute_remote(plan, local, counter)[0]
        paths = [own / sub / shard.filename for sub in task.subdirs]
        check_shard(plan, task.index, paths, task.backend)
        in_repo = [shard.filename if sub == "." else f"{sub}/{shard.filename}"
                   for sub in task.subdirs]
        uploaded = upload_shard(task.upload_to, paths, records, in_repo)
        return tuple({**r, "uploaded": u} for r, u in zip(records, uploaded))
    finally:
        close_inputs()  # a worker runs task after task: no stream outlives its task
        shutil.rmtree(own, ignore_errors=True)


class _ProgressCounter:
    """Bytes written by all tasks since the driver last asked (a Ray actor)."""

    def __init__(self):
        self.bytes = 0

    def add(self, n: int) -> None:
        self.bytes += n

    def take(self) -> int:
        n, self.bytes = self.bytes, 0
        return n


class _LazyActor:
    """``ray.remote(cls)`` made on first use, so importing this module does not import ray."""

    def __init__(self, cls):
        self.cls, self.actor = cls, None

    def options(self, **kwargs):
        if self.actor is None:
            self.actor = import_ray().remote(self.cls)
        return self.actor.options(**kwargs)


_Progress = _LazyActor(_ProgressCounter)


def _task_error(exc, task: ShardTask) -> BaseException:
    """A failed task's own exception: the one-line library error it raised, or one naming the
    shard."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (ExpoStreamError, OSError)):
        return cause
    if isinstance(cause, KeyboardInterrupt):
        return KeyboardInterrupt()
    what = f"{type(cause).__name__}: {_first_line(cause)}" if cause is not None else _first_line(exc)
    # Not OutputError: a run that failed this way keeps its finished shards for a rerun.
    return ExpoStreamError(f"{task.shard.filename}: the Ray task failed ({what})")


def _cancel(ray, refs: list) -> None:
    """Stop tasks (killing their workers, so nothing writes after the lock is released)."""
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - already finished or gone: nothing to stop
            pass
    deadline = time.monotonic() + 10
    while refs and time.monotonic() < deadline:
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=1)


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
