"""``merge``: the library entry point, from two checkpoints to a published output directory."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..card import model_card_text
from ..errors import ExpoStreamError, OutputError, PlanError, UsageError, os_problem
from ..format.checkpoint import INDEX_NAME, SIDE_FILES, open_checkpoint
from ..format.dtypes import TORCH_NAMES
from ..format.files import InputFile
from ..format.recipe import RECIPE_NAME
from ..format.writer import Staging
from ..kernels import describe_backend, resolve_backend
from ..plan.options import (
    DEFAULT_MAX_SHARD_SIZE, MergeOptions, build_schedules, load_recipe, parse_dtype, parse_size,
    read_recipe,
)
from ..plan.planner import Plan, build_plan
from ..sinks.local import LocalSink
from ..sources import close_inputs, open_once
from ..version import __version__
from .executor import DEFAULT_CHUNK_ELEMENTS, DEFAULT_THREADS
from .shard import Executor, ShardTask
from .threads import ThreadedExecutor

log = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class MergeResult:
    outputs: tuple[Path, ...]  # one model directory per schedule
    plan: Plan
    backend: str
    elapsed: float  # seconds, planning excluded
    written: int  # tensor bytes computed in this run (shards kept from a resumed run excluded)

    def summary(self) -> str:
        """One line: what was merged, how much, how fast, with what."""
        plan, n = self.plan, len(self.outputs)
        rate = self.written / self.elapsed / 1e6 if self.elapsed > 0 else float("inf")
        return (f"merged {len(plan.tensors)} tensors into {len(plan.shards)} shard(s) x {n} "
                f"output(s), {plan.output_bytes * n / 1e9:.2f} GB, in {self.elapsed:.1f} s "
                f"({rate:.0f} MB/s written) with {describe_backend(self.backend)}")

    def __repr__(self) -> str:  # the plan lists every tensor: keep it out
        return f"MergeResult(outputs={[str(p) for p in self.outputs]!r}, backend={self.backend!r})"


@dataclass(frozen=True, repr=False)
class PushResult:
    url: str  # the commit
    plan: Plan
    backend: str
    elapsed: float
    written: int  # tensor bytes computed in this run
    uploaded: int  # shard bytes uploaded in this run
    kept: int  # shards an interrupted run had uploaded already

    def summary(self) -> str:
        rate = self.written / self.elapsed / 1e6 if self.elapsed > 0 else float("inf")
        return (f"merged {len(self.plan.tensors)} tensors into {len(self.plan.shards)} shard(s), "
                f"{self.written / 1e9:.2f} GB computed and {self.uploaded / 1e9:.2f} GB uploaded "
                f"in {self.elapsed:.1f} s ({rate:.0f} MB/s), {self.kept} shard(s) kept from an "
                f"earlier run, with {describe_backend(self.backend)}")


def make_options(
    sft: str | Path | None = None,
    dpo: str | Path | None = None,
    *,
    alpha: str | float | list | None = None,
    layer_alphas: str | list | None = None,
    non_layer_alpha: str | float | None = None,
    recipe: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int | None = None,
    copy_unmatched: bool = False,
    sft_name: str | None = None,
    dpo_name: str | None = None,
    stream: bool = False,
) -> MergeOptions:
    """MergeOptions from flag-style values, or from a recipe file (flags then may not set α).

    ``sft``/``dpo`` (given here or by the recipe, which reads paths relative to its own
    directory) are local paths or Hub repo ids ``org/name[@rev]``: repo ids are downloaded, and
    PyTorch ``.bin`` checkpoints converted to safetensors once (that alone imports torch).
    With ``stream``, repo ids are not downloaded: the merge reads their weights with range
    requests (sources/hub.py). ``sft_name``/``dpo_name`` are the inputs' Hub repo ids for the model card's ``base_model``
    (a recipe may give them too; an input given as a repo id names itself); local paths are
    never listed there.

    Raises:
        UsageError: bad values, both or neither α sources, a missing input; an input the recipe
            named gets errors that name the recipe.
        HubError: a repo id that cannot be fetched (one line naming it).
    """
    data = None
    if recipe is not None:
        if alpha is not None or layer_alphas is not None or non_layer_alpha is not None:
            raise UsageError("give α either in the recipe or as flags, not both")
        data = read_recipe(Path(recipe))
    named = [spec if spec is not None else (data or {}).get(key)
             for spec, key in ((sft, "sft"), (dpo, "dpo"))]
    if None in named:
        where = f"{recipe}: the recipe or the command line must name" if recipe else "give"
        raise UsageError(f"{where} both --sft and --dpo")
    if stream:
        sources = [_streamed_source(spec) for spec in named]
    else:
        sources = [_local_source(spec, recipe if given is None else None)
                   for spec, given in zip(named, (sft, dpo))]
    names = dict(sft_name=sft_name or sources[0].repo_id, dpo_name=dpo_name or sources[1].repo_id)
    if data is not None:
        opts = load_recipe(Path(recipe), sources[0].path, sources[1].path, data=data)
        overrides = {k: v for k, v in names.items() if v is not None}
        if dtype is not None:
            overrides["dtype"] = parse_dtype(dtype)
        if max_shard_size is not None:
            overrides["max_shard_size"] = parse_size(max_shard_size)
        if copy_unmatched:
            overrides["copy_unmatched"] = True
        return replace(opts, stream=stream, **overrides)
    return MergeOptions(
        sft=sources[0].path, dpo=sources[1].path,
        schedules=build_schedules(alpha=alpha, layer_alphas=layer_alphas,
                                  non_layer_alpha=non_layer_alpha),
        dtype=parse_dtype(dtype),
        max_shard_size=parse_size(max_shard_size if max_shard_size is not None else DEFAULT_MAX_SHARD_SIZE),
        copy_unmatched=copy_unmatched, stream=stream, **names,
    )


def _local_source(spec: str | Path, recipe: str | Path | None):
    """``spec`` on local disk as safetensors (downloaded, converted as needed); ``recipe`` is
    the recipe that named it, for errors."""
    from ..convert import ensure_safetensors
    from ..hub import resolve

    try:
        source = resolve(spec)
    except ExpoStreamError as exc:
        if recipe is None:
            raise
        raise type(exc)(f"{recipe}: {exc} (relative paths are read from the recipe's "
                        "directory)") from None
    return replace(source, path=ensure_safetensors(source.path))


def _streamed_source(spec: str | Path):
    """A local path as is; a repo id left for :func:`plan_merge` to stream (nothing downloaded)."""
    from ..hub import REPO_ID, Source

    if Path(spec).exists():
        return Source(Path(spec), str(spec))
    m = REPO_ID.match(str(spec))
    if not m:
        raise UsageError(f"{spec}: no such file or directory, and not a Hub repo id (org/name[@rev])")
    return Source(Path(str(spec)), str(spec), m.group("repo"))


def plan_merge(options: MergeOptions) -> Plan:
    """Read both checkpoints' headers and build the plan (no tensor data is read).

    With ``options.stream``, inputs named by repo id are opened on the Hub (range requests).
    """
    return build_plan(_open_input(options.sft, options), _open_input(options.dpo, options), options)


def _open_input(location: Path, options: MergeOptions):
    if options.stream and not location.exists():
        from ..sources.hub import open_checkpoint as open_on_hub

        return open_on_hub(str(location))
    return open_checkpoint(location)


def merge(sft: str | Path | None, dpo: str | Path | None, out: str | Path, *, backend: str = "auto",
          threads: int = DEFAULT_THREADS, overwrite: bool = False,
          chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
          progress: Callable[[int], None] | None = None, command: str | None = None,
          executor: Executor | None = None, **option_values) -> MergeResult:
    """Extrapolate ``dpo + alpha*(dpo - sft)`` and write the result to ``out``.

    The shortcut for ``write_plan(plan_merge(make_options(sft, dpo, **option_values)), out)``.

    Args:
        sft, dpo: checkpoint directories or ``.safetensors`` files.
        out: output directory; with several schedules (``alpha=[0.3, 0.5]``) one subdirectory
            per schedule (``alpha-0.3``, ...).
        option_values: passed to :func:`make_options` (``alpha``, ``layer_alphas``,
            ``non_layer_alpha``, ``recipe``, ``dtype``, ``max_shard_size``, ``copy_unmatched``,
            ``sft_name``, ``dpo_name``).
        The rest: as :func:`write_plan`.

    Example:
        >>> merge("sft/", "dpo/", "out/", alpha=0.3)  # doctest: +SKIP
    """
    plan = plan_merge(make_options(sft, dpo, **option_values))
    return write_plan(plan, out, backend=backend, threads=threads, overwrite=overwrite,
                      chunk_elements=chunk_elements, progress=progress, command=command,
                      executor=executor)


def write_plan(plan: Plan, out: str | Path, *, backend: str = "auto",
               threads: int = DEFAULT_THREADS, overwrite: bool = False,
               chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
               progress: Callable[[int], None] | None = None,
               command: str | None = None, executor: Executor | None = None) -> MergeResult:
    """Compute a plan's tensors and publish them, with side files and model card, at ``out``.

    Args:
        plan: from :func:`plan_merge`.
        out: output directory (one subdirectory per schedule when the plan has several).
        backend: ``auto``, ``native``, ``numba`` or ``numpy``.
        threads: worker threads (per shard task, with a distributed executor).
        overwrite: replace an existing ``out`` (never one holding or inside an input).
        chunk_elements: elements per chunk (bounds memory; never changes a bit).
        progress: called with output bytes as chunks finish.
        command: the command line that asked for this merge, for the recipe and model card.
        executor: runs the shard tasks (execute/shard.py); default: a
            :class:`~.threads.ThreadedExecutor` here. The plan, staging directory, manifest,
            side files and final rename stay here whatever runs the shards.

    Returns:
        A :class:`MergeResult`.

    Raises:
        ExpoStreamError subclasses: UsageError, FormatError, PlanError, OutputError,
        BackendUnavailableError. On any error nothing is left at ``out``; an interrupted run
        leaves its finished shards in a staging directory for the same call to resume.
    """
    options = plan.options
    out = Path(out)
    backend = resolve_backend(backend)
    started = time.perf_counter()
    refuse_identical(plan)
    staging = Staging(out, _local_inputs(options), overwrite)
    subdirs = _subdirs(plan)
    several = len(subdirs) > 1
    log.info("merging %d tensors into %d shard(s) x %d schedule(s) with %s",
             len(plan.tensors), len(plan.shards), len(subdirs), describe_backend(backend))
    sink = LocalSink(plan, staging, subdirs)
    try:
        kept = sink.completed()
        if kept and any(f.source != "local" for f in plan.sft.files + plan.dpo.files):
            # Their inputs' digests were checked only at the end of the run that wrote them.
            log.info("inputs are streamed: recomputing the shards an interrupted run left")
            kept = set()
        todo = [s.index for s in plan.shards if s.index not in kept]
        log.info("%d shard(s) kept from an interrupted run, %d to write", len(kept), len(todo))
        if progress is not None and kept:
            progress(sum(plan.shards[i].data_bytes for i in kept) * len(subdirs))
        tasks = [ShardTask(plan, i, staging.path, tuple(subdirs), backend, threads, chunk_elements)
                 for i in todo]
        executor = executor or ThreadedExecutor()
        executor.run(tasks, sink.shard_done, progress)
        executor.check_inputs(plan.sft.files + plan.dpo.files)  # streamed inputs: each digest
        for i, sub in enumerate(subdirs):
            _write_side_files(staging, sub, plan, i, backend, command)
        staging.commit()
    except (OutputError, OSError) as exc:
        staging.abort()  # a write failed (disk full...): leave nothing behind
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{exc.filename or staging.path}: {os_problem(exc)}") from None
    except BaseException:
        staging.release()  # killed or interrupted: keep finished shards for a resumed run
        raise
    finally:
        close_inputs()
    outputs = tuple((out / sub).resolve() if several else out.resolve() for sub in subdirs)
    written = sum(plan.shards[i].data_bytes for i in todo) * len(subdirs)
    return MergeResult(outputs=outputs, plan=plan, backend=backend,
                       elapsed=time.perf_counter() - started, written=written)


def push_plan(plan: Plan, repo_id: str, *, private: bool = False, backend: str = "auto",
              threads: int = DEFAULT_THREADS, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
              progress: Callable[[int], None] | None = None, command: str | None = None,
              commit_message: str | None = None, executor: Executor | None = None) -> PushResult:
    """Compute a plan's shards and publish them on the Hub as ``repo_id``, with no local output.

    Each shard is computed into a staging directory in the Hub cache, checked (its digests,
    and one tensor recomputed from the inputs), pre-uploaded and deleted while the next one is
    computed; every streamed input's sha256 is checked; then config, index, tokenizer, recipe
    and model card go in with the shards in one commit. Local disk: at most two output shards
    and the small files. A re-run of an interrupted push neither recomputes nor re-uploads the
    shards the Hub already holds.

    With a distributed ``executor`` (Ray), each task computes its shard where it runs, checks
    and pre-uploads it itself, and reads only that shard's part of each input; each input's
    sha256 is then checked by a task of its own (a second read of the inputs); the driver
    makes the one commit. No storage is shared.

    Returns:
        A :class:`PushResult`.

    Raises:
        HubError: the Hub refused or failed (one line naming the repo). FormatError: an input's
        bytes differ from its sha256. The rest as :func:`write_plan`. Nothing is committed then.
    """
    from ..sinks.hub import HubSink, work_dir
    from .verify import check_shard

    backend = resolve_backend(backend)
    started = time.perf_counter()
    refuse_identical(plan)
    work = work_dir(plan, repo_id)
    work.mkdir(parents=True, exist_ok=True)
    staging = Staging(work / "model", _local_inputs(plan.options))
    subdirs = _subdirs(plan)
    executor = executor or ThreadedExecutor()
    try:
        sink = HubSink(plan, staging, subdirs, repo_id, private=private,
                       check=lambda index, paths: check_shard(plan, index, paths, backend),
                       verified=executor.verified)
        kept = sink.completed()
        todo = [s.index for s in plan.shards if s.index not in kept]
        log.info("%d shard(s) already on the Hub from an interrupted run, %d to write",
                 len(kept), len(todo))
        if progress is not None and kept:
            progress(sum(plan.shards[i].data_bytes for i in kept) * len(subdirs))
        remote = not isinstance(executor, ThreadedExecutor)
        tasks = [ShardTask(plan, i, staging.path, tuple(subdirs), backend, threads, chunk_elements,
                           upload_to=repo_id if remote else None)
                 for i in todo]
        executor.run(tasks, sink.shard_done, progress)
        sink.wait()
        executor.check_inputs(plan.sft.files + plan.dpo.files)  # every sha256, before the commit
        for i, sub in enumerate(subdirs):
            _write_side_files(staging, sub, plan, i, backend, command)
        url = sink.commit(commit_message or f"Upload {repo_id.split('/')[-1]} (expo-stream)")
    except OutputError:
        staging.release()
        raise
    except OSError as exc:
        staging.release()
        raise OutputError(f"{exc.filename or staging.path}: {os_problem(exc)}") from None
    except BaseException:
        staging.release()  # the upload record stays for a resumed run
        raise
    finally:
        close_inputs()
    sink.finished()
    written = sum(plan.shards[i].data_bytes for i in todo) * len(subdirs)
    return PushResult(url=url, plan=plan, backend=backend, elapsed=time.perf_counter() - started,
                      written=written, uploaded=sink.uploaded_bytes, kept=len(kept))


def _local_inputs(options: MergeOptions) -> list[Path]:
    """The inputs on local disk (an output inside one is refused); streamed ones are not."""
    return [p for p in (options.sft, options.dpo) if p.exists()]


def _subdirs(plan: Plan) -> list[str]:
    """One output subdirectory per schedule, or ``.`` for a single one."""
    several = len(plan.schedules) > 1
    return [sch.label if several else "." for sch in plan.schedules]


def refuse_identical(plan: Plan) -> None:
    """Raise PlanError when the inputs hold identical tensors (every α would give DPO back)."""
    if not inputs_differ(plan):
        raise PlanError(f"SFT {plan.sft} and DPO {plan.dpo} hold identical tensors: "
                        "the difference is zero everywhere, so every α gives DPO back")


def inputs_differ(plan: Plan, chunk_bytes: int = 2**20) -> bool:
    """Whether any merged tensor's SFT and DPO bytes differ (or their dtypes do).

    Stops at the first difference, which real pairs show in their first tensor; only a pair of
    identical copies is read through. Two reused buffers of ``chunk_bytes``: this runs in the
    merge's process before the executor, inside its memory bound.
    """
    files: dict[InputFile, object] = {}
    buffers = [bytearray(chunk_bytes), bytearray(chunk_bytes)]
    try:
        for t in plan.tensors:
            if t.sft is None:
                continue
            if t.sft.dtype != t.dpo.dtype:
                return True
            for lo in range(0, t.dpo.nbytes, chunk_bytes):
                n = min(chunk_bytes, t.dpo.nbytes - lo)
                views = [memoryview(b)[:n] for b in buffers]
                for info, view in zip((t.sft, t.dpo), views):
                    f = files.get(info.file) or files.setdefault(info.file, open_once(info.file))
                    if f.read_at(info.start + lo, view) != n:
                        return True  # a short file: the executor names it
                if views[0] != views[1]:
                    return True
        return False
    finally:
        for f in files.values():
            f.close()


def _write_side_files(staging: Staging, sub: str, plan: Plan, which: int, backend: str,
                      command: str | None) -> None:
    dpo_root = plan.dpo.root
    for name in SIDE_FILES:
        src = dpo_root / name
        if src.is_file():
            staging.write_bytes(f"{sub}/{name}", src.read_bytes())
    if plan.dpo.config:
        config = dict(plan.dpo.config)
        dtypes = {t.dtype for t in plan.tensors if t.sft is not None}
        if len(dtypes) == 1 and (name := TORCH_NAMES.get(dtypes.pop())):
            config["torch_dtype"] = name
            if "dtype" in config:  # transformers 5 writes `dtype`
                config["dtype"] = name
        staging.write_json(f"{sub}/config.json", config)
    if len(plan.shards) > 1:
        staging.write_json(f"{sub}/{INDEX_NAME}", {
            "metadata": {"total_size": plan.output_bytes},
            "weight_map": plan.weight_map(),
        })
    recipe = resolved_recipe(plan, which, backend)
    staging.write_json(f"{sub}/{RECIPE_NAME}", recipe)
    staging.write_text(f"{sub}/README.md", model_card_text(plan, which, command))


def _recipe_input(checkpoint, location: Path) -> str:
    """How a recipe names an input: ``org/name@commit`` when it came from the Hub (streamed, or
    downloaded into the Hub cache), else its absolute path."""
    from ..format.files import HUB_SCHEME

    first = checkpoint.files[0] if checkpoint.files else None
    if first is not None and first.source == "hub":
        org, name, _ = first.id[len(HUB_SCHEME):].split("/", 2)
        return f"{org}/{name}@{first.version}"
    cached = Path(location).resolve()
    if cached.parent.name == "snapshots" and cached.parent.parent.name.startswith("models--"):
        return f"{cached.parent.parent.name[len('models--'):].replace('--', '/')}@{cached.name}"
    return str(cached)


def resolved_recipe(plan: Plan, which: int, backend: str) -> dict:
    """What made an output: inputs, the schedule, and the α of every tensor."""
    schedule = plan.schedules[which]
    return {
        "tool": "expo-stream",
        "version": __version__,
        "formula": "dpo + alpha * (dpo - sft), correctly rounded (docs/arithmetic.md)",
        "sft": _recipe_input(plan.sft, plan.options.sft),
        "dpo": _recipe_input(plan.dpo, plan.options.dpo),
        "schedule": {
            "alpha": schedule.alpha,
            "layer_alphas": list(schedule.layer_alphas) if schedule.layer_alphas else None,
            "per_layer": list(schedule.per_layer) if schedule.per_layer else None,
            "non_layer_alpha": schedule.non_layer_alpha,
            "rules": [{"match": r.pattern, "alpha": r.alpha} for r in schedule.rules],
        },
        "dtype": plan.options.dtype,
        "max_shard_size": plan.options.max_shard_size,
        "copy_unmatched": plan.options.copy_unmatched,
        "backend": backend,
        "tensors": {
            t.name: ({"alpha": t.alphas[which], "why": t.why[which]} if t.sft is not None
                     else {"copied": True})
            for t in plan.tensors
        },
    }
