"""α candidates on Ray: each candidate is merged, generated and scored by one Ray task.

One task per candidate does all three on one node, so its weights never cross the network (what
mergekit-evolve gets from a placement group around separate merge and evaluation tasks; one task
is the simplest way to the same placement). A task asks for one GPU when the cluster has GPUs,
else one CPU; candidates run in parallel. The candidate directory and ``--out`` must be on storage
the nodes share (as for ``merge --executor ray``): each task publishes its model under
``OUT/candidates/alpha-X``, the layout of a local run, and the report is written on the driver.
A candidate whose task fails is reported with its error; the others still complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ExpoStreamError

log = logging.getLogger(__name__)


def run_candidates(sft, dpo, alphas: list[float], prompts: list[dict], out: Path, candidates: Path,
                   *, scorer_factory, sampling, batch_size: int, overwrite: bool,
                   address: str | None = None) -> dict[float, tuple | str]:
    """α -> ``(model_dir, records, scores)``, or the one-line error of a candidate that failed.

    Raises:
        BackendUnavailableError, UsageError: as :class:`~expo_stream.execute.ray.RayExecutor`.
    """
    from ..execute.ray import connect, import_ray
    from ..plan.options import build_schedules

    ray = import_ray()
    from ray.exceptions import RayError, RayTaskError

    labels = [s.label for s in build_schedules(alpha=",".join(repr(a) for a in alphas))]
    candidates.mkdir(parents=True, exist_ok=True)
    started = connect(ray, address)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) >= 1
        task = ray.remote(_candidate).options(**({"num_gpus": 1} if gpus else {"num_cpus": 1}))
        refs = {task.remote(sft, dpo, alpha, str(candidates / label), prompts, str(out),
                            scorer_factory, sampling, "cuda" if gpus else "cpu", batch_size,
                            overwrite): alpha for alpha, label in zip(alphas, labels)}
        log.info("%d α candidate(s) on Ray, one %s each", len(refs), "GPU" if gpus else "CPU")
        evaluated: dict[float, tuple | str] = {}
        try:
            for ref, alpha in refs.items():
                try:
                    model_dir, records, scores = ray.get(ref)
                    evaluated[alpha] = (Path(model_dir), records, scores)
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    text = str(cause) if isinstance(cause, ExpoStreamError) else \
                        f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
                    evaluated[alpha] = text.strip().splitlines()[0] if text.strip() else "failed"
                except RayError as exc:
                    evaluated[alpha] = f"the Ray task was lost ({type(exc).__name__})"
                if isinstance(evaluated[alpha], str):
                    log.warning("α = %g failed: %s", alpha, evaluated[alpha])
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        return evaluated
    finally:
        if started:
            ray.shutdown()


def _candidate(sft, dpo, alpha: float, model_dir: str, prompts, out: str, scorer_factory,
               sampling, device: str, batch_size: int, overwrite: bool):
    """A Ray task: merge one α, generate, score; ``(model_dir, records, scores)``."""
    from .. import merge
    from .select import evaluate

    result = merge(sft, dpo, model_dir, alpha=repr(alpha), overwrite=overwrite)
    records, scores = evaluate(result.outputs[0], alpha, prompts, Path(out), scorer_factory(),
                               sampling, device, batch_size, overwrite)
    return str(result.outputs[0]), records, scores
