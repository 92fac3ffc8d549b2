"""The ``expo-stream`` command line: parses, calls the library, maps errors to exit codes."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from .errors import ExpoStreamError, UsageError
from .execute.executor import DEFAULT_THREADS
from .kernels import BACKENDS, describe_backend, resolve_backend


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _errors(fn):
    """Library errors become one line on stderr and the error's exit code (no traceback).

    Ctrl-C exits 130 and SIGTERM 143 (128 + the signal, as shells report them), never 1, which
    means bad data. A command that can resume attaches ``resume_hint`` to the interrupt.
    """

    takes_quiet = "quiet" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, verbose: bool = False, quiet: bool = False, **kwargs):
        if verbose or quiet:
            logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR)
        if quiet:
            _quiet_hub()
        if takes_quiet:
            kwargs["quiet"] = quiet
        try:
            return fn(*args, **kwargs)
        except ExpoStreamError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, Terminated) as exc:
            if debug:
                raise
            sig = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            hint = getattr(exc, "resume_hint", None)
            click.echo(f"interrupted ({sig.name}){'; ' + hint if hint else ''}", err=True)
            sys.exit(128 + sig)

    for option in (click.option("--debug", is_flag=True, help="Show tracebacks."),
                   click.option("-q", "--quiet", is_flag=True,
                                help="No progress bars; errors and warnings only."),
                   click.option("-v", "--verbose", is_flag=True, help="Log what the engine does.")):
        wrapper = option(wrapper)
    return wrapper


def _version(ctx: click.Context, param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .version import __version__

    try:
        kernel = describe_backend(resolve_backend())
    except ExpoStreamError as exc:  # e.g. EXPO_STREAM_SIMD names a level this CPU cannot run
        raise click.ClickException(str(exc)) from None
    click.echo(f"expo-stream {__version__}; kernel: {kernel}")
    ctx.exit()


@click.group()
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and the kernel backend and SIMD level a merge will use.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the engine does (also after the command).")
@click.option("-q", "--quiet", is_flag=True, help="Errors and warnings only (also after the command).")
def main(verbose: bool, quiet: bool) -> None:
    """ExPO model extrapolation: theta = dpo + alpha * (dpo - sft), streamed shard by shard."""
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if quiet:
        _quiet_hub()
    signal.signal(signal.SIGTERM, _on_sigterm)


def _quiet_hub() -> None:
    """No huggingface_hub progress bars (downloads, uploads) under --quiet."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


HUB_HELP = """
\b
Hub access uses huggingface_hub's standard environment:
  HF_TOKEN          token for private repos and pushes (or a stored `hf auth login`)
  HF_HOME           cache and config location (downloads go to its hub/ cache)
  HF_ENDPOINT       another Hub endpoint (a mirror, a local test server)
  HF_HUB_OFFLINE=1  use the local cache only, no network
  HF_HUB_DISABLE_XET=1  upload through the LFS protocol instead of Xet
"""


@main.command(epilog=HUB_HELP)
@click.option("--sft", help="SFT checkpoint: dir, .safetensors file, or Hub repo id org/name[@rev]. "
              "A PyTorch .bin checkpoint is converted first (this imports torch; weights_only).")
@click.option("--dpo", help="Aligned (DPO/RLHF) checkpoint: dir, file or Hub repo id.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output directory (may be left out with --push-to: nothing is kept locally).")
@click.option("--alpha", help="Uniform alpha; a comma list (0.3,0.5) writes OUT/alpha-X per value.")
@click.option("--layer-alphas", help="alpha per contiguous layer group, e.g. 5,10,15.")
@click.option("--non-layer-alpha",
              help="alpha for tensors outside the layers (default: the first group's).")
@click.option("--recipe", type=click.Path(path_type=Path),
              help="YAML recipe (docs/recipes.md; example: docs/recipe.example.yaml).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Output dtype of merged tensors (default: DPO's).")
@click.option("--max-shard-size", default=None, help="Largest output shard, e.g. 5GB (default).")
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto",
              show_default=True, help="Kernel backend.")
@click.option("--threads", type=click.IntRange(1, 256), default=DEFAULT_THREADS, show_default=True,
              help="Worker threads (default: cores + 1, so one can wait on the disk).")
@click.option("--copy-unmatched", is_flag=True, help="Copy tensors found only in DPO unchanged.")
@click.option("--executor", type=click.Choice(["threads", "ray"]), default="threads",
              show_default=True, help="Run shards here, or one Ray task per shard on a cluster "
              "whose nodes share the inputs' and --out's storage (pip install 'expo-stream[ray]').")
@click.option("--ray-address", metavar="ADDR", help="With --executor ray: the cluster (default: "
              "RAY_ADDRESS, else a local Ray started for the run).")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit; reads headers only.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--sft-name", metavar="ORG/NAME",
              help="Hub repo id of a local SFT input, for the model card's base_model.")
@click.option("--dpo-name", metavar="ORG/NAME",
              help="Hub repo id of a local DPO input, for the model card's base_model.")
@click.option("--stream", is_flag=True, help="Read Hub repo ids' weights with range requests "
              "instead of downloading them: nothing of the inputs is stored (checked against "
              "their sha256 on the Hub).")
@click.option("--push-to", metavar="ORG/NAME", help="Push the merged model to this Hub repo; "
              "without --out, each shard is uploaded as it is done and one commit publishes all.")
@click.option("--private", is_flag=True, help="With --push-to: create the repo private.")
@_errors
def merge(sft, dpo, out, alpha, layer_alphas, non_layer_alpha, recipe, dtype, max_shard_size,
          backend, threads, copy_unmatched, executor, ray_address, dry_run, overwrite, quiet,
          sft_name, dpo_name, stream, push_to, private) -> None:
    """Extrapolate DPO away from SFT and write a new checkpoint.

    Reads both checkpoints tensor by tensor in bounded memory; output appears at OUT only when
    complete. A re-run of an interrupted merge resumes it. With --stream --push-to and no
    --out, a merge goes from Hub to Hub in bounded disk and RAM, whatever the model's size.
    """
    from .execute.merge import make_options, plan_merge, write_plan
    from .report import describe_costs, describe_plan

    if out is None and not push_to:
        raise UsageError("give --out DIR, or --push-to ORG/NAME to publish without a local copy")
    if out is None and executor == "ray" and not stream:
        raise UsageError("--executor ray with --push-to and no --out reads the inputs from the "
                         "Hub: add --stream (or give --out on storage every node sees)")
    options = make_options(sft, dpo, alpha=alpha, layer_alphas=layer_alphas,
                           non_layer_alpha=non_layer_alpha, recipe=recipe, dtype=dtype,
                           max_shard_size=max_shard_size, copy_unmatched=copy_unmatched,
                           sft_name=sft_name, dpo_name=dpo_name, stream=stream)
    plan = plan_merge(options)
    if dry_run:
        from .execute.executor import DEFAULT_CHUNK_ELEMENTS
        from .format.writer import check_output

        if out is not None:  # what the run would refuse
            check_output(out, [p for p in (options.sft, options.dpo) if p.exists()], overwrite)
        click.echo(describe_plan(plan, describe_backend(resolve_backend(backend))))
        click.echo(describe_costs(plan, stream=stream, local_copy=out is not None,
                                  threads=threads, chunk_elements=DEFAULT_CHUNK_ELEMENTS))
        return
    runner = None
    if executor == "ray":
        from .execute.ray import RayExecutor

        runner = RayExecutor(ray_address)
    elif ray_address:
        raise UsageError("--ray-address needs --executor ray")
    if out is None:
        _push_streamed(plan, push_to, private, backend, threads, quiet, stream, runner)
        return
    bar, progress = _merge_progress(plan, quiet, stream)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm() if bar is not None else contextlib.nullcontext():
            result = write_plan(plan, out, backend=backend, threads=threads,
                                overwrite=overwrite,
                                # Where it ran is no part of the model (nor a cluster's address).
                                command=_command_line(("--executor", "--ray-address")),
                                progress=progress, executor=runner)
    except (KeyboardInterrupt, Terminated) as exc:
        from .format.manifest import read_manifest
        from .format.writer import staging_path

        partial = staging_path(out.absolute())
        if partial.is_dir():
            first = partial / (plan.schedules[0].label if len(plan.schedules) > 1 else ".")
            try:
                done = len((read_manifest(first) or {"shards": {}})["shards"])
            except ExpoStreamError:
                done = 0
            exc.resume_hint = (f"{done} of {len(plan.shards)} shard(s) finished, kept in "
                               f"{partial}; run the same command again to resume")
        raise
    finally:
        if bar is not None:
            bar.close()
    click.echo(result.summary())
    for path in result.outputs:
        click.echo(f"wrote {path}")
    if push_to:
        from .execute.push import push as hub_push

        if len(result.outputs) != 1:
            raise UsageError("--push-to takes one model; push each alpha-* directory with `push`")
        click.echo(hub_push(result.outputs[0], push_to, private=private))


def _merge_progress(plan, quiet: bool, stream: bool):
    """Print the plan's warnings; then, unless ``quiet``, a bar of output bytes (with the
    network's pace beside it when inputs stream) and its callback: ``(bar, progress)``."""
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if quiet:
        return None, None
    import time

    from tqdm import tqdm

    bar = tqdm(total=plan.output_bytes * len(plan.schedules), unit="B", unit_scale=True,
               unit_divisor=1024, desc="merge", file=sys.stderr, dynamic_ncols=True)
    if not stream:
        return bar, bar.update
    from .sources.hub import STATS

    started, before = time.perf_counter(), STATS.downloaded

    def progress(n: int) -> None:
        bar.update(n)
        seconds = max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"net {(STATS.downloaded - before) / seconds / 2**20:.0f} MiB/s",
                            refresh=False)
    return bar, progress


def _push_streamed(plan, repo_id: str, private: bool, backend: str, threads: int,
                   quiet: bool, stream: bool, executor=None) -> None:
    """``merge --push-to`` without ``--out``: shard by shard to the Hub, one commit."""
    from .execute.merge import push_plan

    bar, progress = _merge_progress(plan, quiet, stream)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm() if bar is not None else contextlib.nullcontext():
            result = push_plan(plan, repo_id, private=private, backend=backend, threads=threads,
                               progress=progress, executor=executor,
                               command=_command_line(("--threads", "--executor", "--ray-address")))
    finally:
        if bar is not None:
            bar.close()
    click.echo(result.summary())
    click.echo(result.url)


def _command_line(without: tuple[str, ...] = ()) -> str:
    """This command as typed, less the ``without`` options (and their values)."""
    import shlex

    args, kept = iter(sys.argv[1:]), []
    for arg in args:
        if arg in without:
            next(args, None)
        elif arg.split("=", 1)[0] not in without:
            kept.append(arg)
    return shlex.join(["expo-stream", *kept])


@main.command(epilog=HUB_HELP)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--repo", required=True, metavar="ORG/NAME", help="Hub repo to push to.")
@click.option("--private", is_flag=True, help="Create the repo private (if it does not exist).")
@click.option("--revision", metavar="BRANCH", help="Branch to push to (created if needed).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option("--commit-message", help="Commit message.")
@_errors
def push(out: Path, repo: str, private: bool, revision: str | None, create_pr: bool,
         commit_message: str | None) -> None:
    """Push a merged model (after verifying it) to the Hugging Face Hub.

    Creates the repo if needed, uploads the folder (large shards through the LFS protocol, or
    Xet where hf_xet is installed) and prints the commit URL.
    """
    from .execute.push import push as hub_push

    click.echo(hub_push(out, repo, private=private, revision=revision, create_pr=create_pr,
                        commit_message=commit_message))


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--sample", type=click.IntRange(0), default=8, show_default=True,
              help="Tensors to recompute from the recipe's inputs (the largest, then random).")
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto",
              show_default=True, help="Kernel backend for the recomputation.")
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
@click.option("--model", required=True, help="Model directory (or Hub id) with a tokenizer.")
@click.option("--prompts", required=True, type=click.Path(path_type=Path),
              help="AlpacaEval JSON/JSONL (instruction, input, dataset) or a text file, one per line.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output JSON file.")
@click.option("--greedy", is_flag=True, help="Greedy decoding (tests); default: the ExPO paper's sampling.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="Default 0.7.")
@click.option("--top-k", type=click.IntRange(0), help="Default 50 (0: no top-k cut).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Default 0.9.")
@click.option("--max-new-tokens", type=click.IntRange(1),
              help="Default 2048, the ExPO paper's; on a CPU, try a few hundred first.")
@click.option("--seed", type=int, help="Default 42.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Prompts (or outputs) per forward pass.")
@click.option("--template", type=click.Choice(["chat", "plain"]), default="chat", show_default=True,
              help="plain: feed the prompt text without a chat template (on purpose only).")
@click.option("--generator", help="Name recorded in each record (default: the model's directory name).")
@click.option("--device", help="cuda, cuda:1, cpu... (default: CUDA if present).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Default: bf16 on CUDA, fp32 on CPU.")
@click.option("--gguf-file", help="Load this GGUF file from the model directory (needs gguf).")
@click.option("--overwrite", is_flag=True,
              help="Start again in an --out made by another model or other settings.")
@_errors
def generate(model, prompts, out, greedy, temperature, top_k, top_p, max_new_tokens, seed,
             batch_size, template, generator, device, dtype, gguf_file, overwrite) -> None:
    """Answer prompts with a model's chat template; decode only the new tokens. Resumable."""
    from dataclasses import replace

    from .format.writer import check_disjoint

    check_disjoint(out, [prompts, *([Path(model)] if Path(model).exists() else [])])

    from .device import pick_device
    from .generation.generate import (GREEDY, PAPER, generate_outputs, load_model, load_prompts,
                                      resumable, run_settings)
    from .hub import resolve

    sampling = GREEDY if greedy else PAPER
    overrides = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                       max_new_tokens=max_new_tokens, seed=seed).items() if v is not None}
    sampling = replace(sampling, **overrides)
    rows = load_prompts(prompts)
    location = resolve(model).path
    # Checked before the model loads: a refused resume costs nothing.
    done = resumable(out, rows, run_settings(location, sampling, template, batch_size), overwrite)
    if done:
        click.echo(f"resuming: {done} of {len(rows)} prompts already answered in {out}", err=True)
    lm, tokenizer = load_model(location, pick_device(device), dtype, gguf_file)
    records = generate_outputs(lm, tokenizer, rows, sampling=sampling, template=template,
                               batch_size=batch_size, out=out, overwrite=overwrite,
                               generator=generator or Path(str(model)).name)
    click.echo(f"wrote {len(records)} outputs to {out}")


def _scorer(reward_model, implicit_reward, sft, dpo, beta, device, batch_size):
    from .device import pick_device
    from .generation.score import ImplicitRewardScorer, RewardModelScorer

    if bool(reward_model) == bool(implicit_reward):
        raise UsageError("give either --reward-model PATH or --implicit-reward (with --sft/--dpo)")
    # The device is picked where the scorer is made: with select-alpha on Ray, a task's node.
    if implicit_reward:
        if not (sft and dpo):
            raise UsageError("--implicit-reward needs --sft and --dpo")
        return lambda: ImplicitRewardScorer(sft, dpo, beta=beta, device=pick_device(device),
                                            batch_size=batch_size)
    return lambda: RewardModelScorer(reward_model, device=pick_device(device),
                                     batch_size=batch_size)


@main.command()
@click.option("--outputs", required=True, type=click.Path(path_type=Path), help="AlpacaEval JSON/JSONL.")
@click.option("--reward-model", help="Sequence-classification reward model (raw logit).")
@click.option("--implicit-reward", is_flag=True, help="Score by beta*(log p_dpo - log p_sft).")
@click.option("--sft", help="SFT model (for --implicit-reward).")
@click.option("--dpo", help="DPO model (for --implicit-reward).")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="DPO's β, scaling the implicit reward.")
@click.option("--baseline", type=click.Path(path_type=Path), help="Outputs to compute a win rate against.")
@click.option("--out", type=click.Path(path_type=Path), help="Scores JSON (default: OUTPUTS.scores.json).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Prompts (or outputs) per forward pass.")
@click.option("--device", help="cuda, cuda:1, cpu... (default: CUDA if present).")
@_errors
def score(outputs, reward_model, implicit_reward, sft, dpo, beta, baseline, out, batch_size, device):
    """Score outputs with a reward model or DPO's implicit reward; summary with win rate."""
    from .generation.score import score_file, write_json

    scorer = _scorer(reward_model, implicit_reward, sft, dpo, beta, device, batch_size)()
    result = score_file(outputs, scorer, baseline)
    out = out or outputs.with_name(outputs.name + ".scores.json")
    write_json(out, result)
    s = result["summary"]
    line = f"{s['count']} scored: mean {s['mean']:.4f}, avg length {s['avg_length_words']:.1f} words"
    if "win_rate" in s and s["win_rate"] is not None:
        line += f", win rate {s['win_rate']:.3f} vs baseline ({s['compared']} compared)"
    click.echo(line)
    click.echo(f"wrote {out}")


@main.command("select-alpha")
@click.option("--sft", required=True, help="SFT checkpoint (local or Hub id).")
@click.option("--dpo", required=True, help="DPO checkpoint (local or Hub id).")
@click.option("--alphas", required=True, help="Comma list, e.g. 0,0.1,0.3,0.5,1 (0 is always added).")
@click.option("--prompts", required=True, type=click.Path(path_type=Path), help="Dev prompts.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--reward-model", help="Sequence-classification reward model.")
@click.option("--implicit-reward", is_flag=True, help="Score by DPO's implicit reward (sft vs dpo).")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="DPO's β, scaling the implicit reward.")
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of the paper's sampling.")
@click.option("--max-new-tokens", type=click.IntRange(1),
              help="Tokens generated per answer (default 2048, the ExPO paper's).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Prompts (or outputs) per forward pass.")
@click.option("--keep", type=click.Choice(["best", "all"]), default="best", show_default=True,
              help="Candidate models to keep under OUT/candidates: the best α's, or all.")
@click.option("--device", help="cuda, cuda:1, cpu... (default: CUDA if present).")
@click.option("--overwrite", is_flag=True, help="Replace the candidates of an earlier run in OUT.")
@click.option("--executor", type=click.Choice(["threads", "ray"]), default="threads",
              show_default=True, help="Evaluate candidates here in turn, or one Ray task each "
              "(merge, generate, score on one node; a GPU each when the cluster has GPUs).")
@click.option("--ray-address", metavar="ADDR", help="With --executor ray: the cluster (default: "
              "RAY_ADDRESS, else a local Ray started for the run).")
@_errors
def select_alpha(sft, dpo, alphas, prompts, out, reward_model, implicit_reward, beta, greedy,
                 max_new_tokens, batch_size, keep, device, overwrite, executor, ray_address):
    """Build every α candidate in one pass, generate, score; report reward and length per α."""
    from dataclasses import replace

    from .device import pick_device
    from .generation.generate import GREEDY, PAPER, load_prompts
    from .generation.select import select_alpha as run, verdict
    from .plan.options import parse_alpha_list

    if ray_address and executor != "ray":
        raise UsageError("--ray-address needs --executor ray")
    sampling = GREEDY if greedy else PAPER
    if max_new_tokens:
        sampling = replace(sampling, max_new_tokens=max_new_tokens)
    factory = _scorer(reward_model, implicit_reward, sft, dpo, beta, device, batch_size)
    report = run(sft, dpo, list(parse_alpha_list(alphas, "alphas")),
                 load_prompts(prompts), out, scorer_factory=factory, sampling=sampling,
                 device=pick_device(device), batch_size=batch_size, keep=keep, overwrite=overwrite,
                 executor=executor, ray_address=ray_address)
    click.echo((Path(out) / "report.md").read_text())
    click.echo(verdict(report).replace("**", ""))


@main.command("check-outputs")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--strip-echo", type=click.Path(path_type=Path),
              help="Write a repaired copy with echoed instructions removed.")
@_errors
def check_outputs(file: Path, as_json: bool, strip_echo: Path | None) -> None:
    """Diagnose an AlpacaEval-style output file: echoes, instruction-only, empty, repetition."""
    import json

    from .generation.diagnostics import diagnose, load_outputs, strip_echo as strip

    rows = load_outputs(file)
    report = diagnose(rows)
    if strip_echo is not None:
        fixed = strip(rows)
        strip_echo.write_text(json.dumps(fixed, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        after = diagnose(fixed)
        report["stripped"] = {"path": str(strip_echo), "echo": after["echo"], "empty": after["empty"]}
    if as_json:
        click.echo(json.dumps(report))
        return
    lengths = report["length_words"]
    click.echo(f"{file}: {report['total']} outputs")
    click.echo(f"  echo (begins with the instruction): {report['echo']}")
    click.echo(f"  instruction only: {report['instruction_only']} "
               f"({report['instruction_only_verbatim']} verbatim)")
    click.echo(f"  empty: {report['empty']}   repetitive: {report['repetitive']}")
    click.echo(f"  length in words: mean {lengths['mean']:.1f}, median {lengths['median']}, "
               f"min {lengths['min']}, max {lengths['max']}")
    if strip_echo is not None:
        click.echo(f"  wrote {strip_echo}: {report['stripped']['echo']} echoes left, "
                   f"{report['stripped']['empty']} empty")


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("expo-demo"),
              show_default=True, help="Where the demo pair and the merged model go.")
@click.option("--alpha", default="0.3", show_default=True, help="α for the demo merge.")
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto",
              show_default=True, help="Kernel backend.")
@_errors
def demo(directory: Path, alpha: str, backend: str) -> None:
    """Make a small Llama-layout SFT/DPO pair and merge it (no download needed)."""
    from .demo import make_pair
    from .execute.merge import merge as run_merge

    sft, dpo = make_pair(directory)
    result = run_merge(sft, dpo, directory / "merged", alpha=alpha, backend=backend,
                       overwrite=True, command=_command_line())
    plan = result.plan
    click.echo(f"sft: {sft} ({len(plan.sft.files)} file)  dpo: {dpo} ({len(plan.dpo.files)} files)")
    click.echo(f"merged {len(plan.tensors)} tensors, {plan.output_bytes} bytes, alpha={alpha}, "
               f"backend {describe_backend(result.backend)}")
    click.echo(f"wrote {result.outputs[0]}")


# -- multimodal (extra [mm]) -----------------------------------------------------------------


@main.group()
def mm() -> None:
    """Multimodal DDPO (RLHF-V) on a LLaVA-style CLIP + LLM model; needs the [mm] extra."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "peft", "datasets", "PIL", "pyarrow")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"the mm commands need {', '.join(missing)}: "
                                   "pip install 'expo-stream[mm]' (torch first)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per result, as the other commands print
    # raised inside transformers on peft's behalf; nothing the user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)


def _tokenizer(spec: str):
    if spec == "tiny":
        from .multimodal.tiny import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec)
    except OSError as exc:
        raise UsageError(f"{spec}: cannot load a tokenizer ({exc})") from None


@mm.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Where the DatasetDict goes (save_to_disk).")
@click.option("--tokenizer", "tokenizer_spec", required=True,
              help="The model's tokenizer (directory), or `tiny`; segments are found with it.")
@click.option("--fraction", type=float, default=1.0, show_default=True,
              help="Keep this share of rows, chosen deterministically by row id.")
@click.option("--test-size", type=float, default=0.0, show_default=True,
              help="Share of kept rows moved to a `test` split.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier `mm preprocess` output.")
@_errors
def preprocess(source, out, tokenizer_spec, fraction, test_size, overwrite) -> None:
    """RLHF-V rows (parquet/JSON/JSONL, or a folder of per-sample JSON) to a DatasetDict."""
    from .multimodal.data import preprocess as run

    report = run(source, out, _tokenizer(tokenizer_spec), fraction=fraction,
                 test_size=test_size, overwrite=overwrite)
    click.echo(report.summary())
    click.echo(f"wrote {out}")


def _train_options(fn):
    """One option per TrainConfig setting, with the type, limits and help the config declares.

    Unset options arrive as None so that ``TrainConfig.for_run`` applies the defaults, including
    those that depend on the run (lr with --tiny, LoRA α from the rank, precision by device).
    """
    from dataclasses import fields

    from .multimodal.train import TrainConfig

    for f in reversed(fields(TrainConfig)):
        meta = f.metadata
        if "choices" in meta:
            kind = click.Choice(meta["choices"])
        else:
            rng = click.IntRange if meta["type"] is int else click.FloatRange
            bounds = {k: meta[k] for k in ("min", "max", "min_open", "max_open") if k in meta}
            kind = rng(**bounds) if bounds else meta["type"]
        shown = "" if f.default is None or meta["run_default"] else f"  [default: {f.default}]"
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        fn = click.option(flag, f.name, type=kind, default=None,
                          help=meta["help"] + shown)(fn)
    return fn


@mm.command("train-ddpo")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--tiny", is_flag=True,
              help="Tiny random model and, without --data, toy square-colour data (demo, tests); "
                   "lr defaults to 1e-3 there.")
@click.option("--vision", type=click.Path(path_type=Path), help="CLIP vision checkpoint directory.")
@click.option("--llm", type=click.Path(path_type=Path), help="Causal LM directory (with tokenizer).")
@click.option("--model", type=click.Path(path_type=Path), help="An existing LLaVA model directory.")
@click.option("--data", type=click.Path(path_type=Path),
              help="`mm preprocess` output, or raw RLHF-V data (preprocessed in memory).")
@_train_options
@click.option("--device", help="cpu, cuda, cuda:1... (default: CUDA if present).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier training run in --out.")
@_errors
def train_ddpo(out, tiny, vision, llm, model, data, device, resume, overwrite, quiet,
               **settings) -> None:
    """DDPO: LoRA on the LLM's attention + the projector, token weights from RLHF-V segments."""
    from .multimodal import data as mmdata
    from .multimodal.model import load_processor, read_run, start_model, start_of
    from .multimodal.tiny import toy_rows
    from .device import pick_device
    from .multimodal.train import TrainConfig, check_run_dir
    from .multimodal.train import train_ddpo as run

    inputs = tuple(p for p in (vision, llm, model, data) if p is not None)
    if not resume:
        check_run_dir(out, inputs, overwrite)  # before loading anything
    device = pick_device(device)
    config = TrainConfig.for_run(tiny=tiny, device=device, **settings)  # a resume reads its own
    if resume:
        source = read_run(out)["data"]
        net = processor = None
        tokenizer = load_processor(start_of(out)).tokenizer
    else:
        source = ({"path": str(data.resolve())} if data is not None
                  else {"tiny": 32} if tiny else None)
        if source is None:
            raise UsageError("--data is required (or --tiny for the toy data)")
        net, processor = start_model(tiny=tiny, vision=vision, llm=llm, model=model,
                                     seed=config.seed)
        tokenizer = processor.tokenizer
    rows = toy_rows(source["tiny"]) if "tiny" in source else source["path"]
    dataset, eval_dataset = mmdata.splits(rows, tokenizer)
    bar = None

    def progress(step_metrics: dict, step: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=step - 1, desc="train-ddpo", unit="step",
                       file=sys.stderr, dynamic_ncols=True)
        bar.set_postfix(loss=f"{step_metrics['loss']:.4f}",
                        acc=f"{step_metrics['rewards/accuracy']:.2f}", refresh=False)
        bar.update(1)

    try:
        metrics = run(out, net=net, processor=processor, dataset=dataset,
                      eval_dataset=eval_dataset, start=model, data_source=source, config=config,
                      device=device, resume=resume, overwrite=overwrite, inputs=inputs,
                      progress=progress)
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"step {metrics.get('step')}: loss {metrics.get('loss', float('nan')):.6f}, reward "
               f"accuracy {metrics.get('rewards/accuracy', float('nan')):.3f}, margin "
               f"{metrics.get('rewards/margin', float('nan')):.6f}")
    click.echo(f"wrote {out}")


@mm.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Directory for the full model (safetensors), the DPO side of a merge.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Export this checkpoint (RUN/checkpoints/step-N) instead of the final weights.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out.")
@_errors
def export(run_dir, out, checkpoint, overwrite) -> None:
    """Merge a run's LoRA adapters and projector into full safetensors for `expo-stream merge`."""
    from .multimodal.export import export as run
    from .multimodal.model import start_of

    run(run_dir, out, checkpoint=checkpoint, overwrite=overwrite)
    click.echo(f"wrote {out}")
    click.echo(f"extrapolate with: expo-stream merge --sft {start_of(run_dir)} --dpo {out} "
               "--out OUT --alpha A")


@mm.command("generate")
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A training run directory or an exported/merged LLaVA model directory.")
@click.option("--image", type=click.Path(path_type=Path), help="One image (with --prompt).")
@click.option("--prompt", help="The question about --image.")
@click.option("--requests", type=click.Path(path_type=Path),
              help="Batch form: JSONL of {\"image\": PATH, \"prompt\": TEXT}.")
@click.option("--out", type=click.Path(path_type=Path), help="Write JSONL results here.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True,
              help="Tokens generated per answer.")
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for --sample.")
@_errors
def mm_generate(model, image, prompt, requests, out, max_new_tokens, sample, seed) -> None:
    """Answer questions about images with the trained projector."""
    import json

    from .multimodal.generate import generate as run, load_requests

    if (requests is None) == (image is None or prompt is None):
        raise UsageError("give --image with --prompt, or --requests")
    if out is not None:
        from .format.writer import check_disjoint

        check_disjoint(out, [p for p in (model, image, requests) if p is not None])
    reqs = load_requests(requests) if requests else [{"image": str(image), "prompt": prompt}]
    results = run(model, reqs, max_new_tokens=max_new_tokens, greedy=not sample, seed=seed)
    if out:
        out.write_text("".join(json.dumps(r) + "\n" for r in results))
        click.echo(f"wrote {len(results)} answers to {out}")
    else:
        for r in results:
            click.echo(r["output"])


if __name__ == "__main__":
    main()
