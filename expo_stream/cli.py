"""The ``expo-stream`` command line: parses, calls the library, maps errors to exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from .errors import ExpoStreamError
from .execute.executor import DEFAULT_THREADS
from .kernels import BACKENDS, describe_backend, resolve_backend


def _errors(fn):
    """Library errors become one line on stderr and the error's exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExpoStreamError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return click.option("--debug", is_flag=True, help="Show tracebacks.")(wrapper)


@click.group()
@click.version_option(package_name="expo-stream")
@click.option("-v", "--verbose", is_flag=True, help="Log what the engine does.")
def main(verbose: bool) -> None:
    """ExPO model extrapolation: theta = dpo + alpha * (dpo - sft), streamed shard by shard."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--sft", type=click.Path(path_type=Path), help="SFT checkpoint (dir or .safetensors).")
@click.option("--dpo", type=click.Path(path_type=Path), help="Aligned (DPO/RLHF) checkpoint.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--alpha", help="Uniform alpha; a comma list (0.3,0.5) writes OUT/alpha-X per value.")
@click.option("--layer-alphas", help="alpha per contiguous layer group, e.g. 5,10,15.")
@click.option("--non-layer-alpha",
              help="alpha for tensors outside the layers (default: the first group's).")
@click.option("--recipe", type=click.Path(path_type=Path), help="YAML recipe (see docs).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Output dtype of merged tensors (default: DPO's).")
@click.option("--max-shard-size", default=None, help="Largest output shard, e.g. 5GB (default).")
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto",
              show_default=True, help="Kernel backend.")
@click.option("--threads", type=click.IntRange(1, 256), default=DEFAULT_THREADS, show_default=True,
              help="Worker threads (default: cores + 1, so one can wait on the disk).")
@click.option("--copy-unmatched", is_flag=True, help="Copy tensors found only in DPO unchanged.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit; reads headers only.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_errors
def merge(sft, dpo, out, alpha, layer_alphas, non_layer_alpha, recipe, dtype, max_shard_size,
          backend, threads, copy_unmatched, dry_run, overwrite, quiet) -> None:
    """Extrapolate DPO away from SFT and write a new checkpoint.

    Reads both checkpoints tensor by tensor in bounded memory; output appears at OUT only when
    complete.
    """
    from .execute.merge import make_options, merge as run_merge, plan_merge
    from .report import describe_plan

    options = make_options(sft, dpo, alpha=alpha, layer_alphas=layer_alphas,
                           non_layer_alpha=non_layer_alpha, recipe=recipe, dtype=dtype,
                           max_shard_size=max_shard_size, copy_unmatched=copy_unmatched)
    chosen = resolve_backend(backend)
    plan = plan_merge(options)
    if dry_run:
        click.echo(describe_plan(plan, describe_backend(chosen)))
        return
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=plan.output_bytes * len(plan.schedules), unit="B", unit_scale=True,
                   unit_divisor=1024, desc="merge", file=sys.stderr, dynamic_ncols=True)
    try:
        result = run_merge(out=out, plan=plan, backend=chosen, threads=threads,
                           overwrite=overwrite, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"backend: {describe_backend(result.backend)}")
    for path in result.outputs:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--sample", type=click.IntRange(0), default=8, show_default=True,
              help="Tensors to recompute from the recipe's inputs (the largest, then random).")
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto")
@_errors
def verify(out: Path, sample: int, backend: str) -> None:
    """Check a merged output: headers and index, shard digests, recomputed tensors.

    Exits 1 if anything differs.
    """
    from .execute.verify import verify as run_verify

    failed = False
    for report in run_verify(out, sample=sample, backend=backend):
        status = "OK" if report.ok else "FAILED"
        click.echo(f"{report.path}: {status} ({report.shards_checked} shard(s) checked, "
                   f"{len(report.tensors_recomputed)} tensor(s) recomputed)")
        for problem in report.problems:
            click.echo(f"  {problem}")
        failed |= not report.ok
    if failed:
        sys.exit(1)


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("expo-demo"),
              show_default=True, help="Where the demo pair and the merged model go.")
@click.option("--alpha", default="0.3", show_default=True)
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto")
@_errors
def demo(directory: Path, alpha: str, backend: str) -> None:
    """Make a small Llama-layout SFT/DPO pair and merge it (no download needed)."""
    from .demo import make_pair
    from .execute.merge import merge as run_merge

    sft, dpo = make_pair(directory)
    result = run_merge(sft, dpo, directory / "merged", alpha=alpha, backend=backend,
                       overwrite=True)
    plan = result.plan
    click.echo(f"sft: {sft} ({len(plan.sft.files)} file)  dpo: {dpo} ({len(plan.dpo.files)} files)")
    click.echo(f"merged {len(plan.tensors)} tensors, {plan.output_bytes} bytes, alpha={alpha}, "
               f"backend {describe_backend(result.backend)}")
    click.echo(f"wrote {result.outputs[0]}")


if __name__ == "__main__":
    main()
