"""``verify``: re-read a merged output and prove it is what its recipe says.

Three checks: the output is a valid checkpoint (every header validated, index and shards agree);
every shard has the size and range digests recorded in its manifest; and a sample of tensors,
recomputed from the inputs named in the recipe, matches bit for bit.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FormatError, UsageError
from ..format.checkpoint import open_checkpoint
from ..format.dtypes import NUMPY_DTYPES
from ..format.files import InputFile
from ..format.manifest import MANIFEST_NAME, check_file, differing_ranges, read_manifest
from ..format.recipe import RECIPE_NAME
from ..format.safetensors import MappedFile, TensorInfo
from ..hub import HubError
from ..kernels import apply, load_backend, resolve_backend
from ..sources import open_once
from .executor import DEFAULT_CHUNK_ELEMENTS



@dataclass
class VerifyReport:
    path: Path
    shards_checked: int = 0
    tensors_recomputed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def model_dirs(out: Path) -> list[Path]:
    """``out`` itself, or its per-α subdirectories when it holds several models."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out}: no such output directory")
    if (out / RECIPE_NAME).is_file():
        return [out]
    subs = sorted(p for p in out.iterdir() if (p / RECIPE_NAME).is_file())
    if not subs:
        raise FormatError(f"{out}: no {RECIPE_NAME}: not an expo-stream output")
    return subs


def verify(out: str | Path, sample: int = 8, seed: int = 0, backend: str = "auto") -> list[VerifyReport]:
    """Verify every model under ``out``; one report each (see module doc)."""
    return [_verify_one(d, sample, seed, backend) for d in model_dirs(Path(out))]


def _verify_one(directory: Path, sample: int, seed: int, backend: str) -> VerifyReport:
    report = VerifyReport(directory)
    try:
        checkpoint = open_checkpoint(directory)
    except (FormatError, UsageError) as exc:
        report.problems.append(str(exc))
        return report
    manifest = read_manifest(directory)
    if manifest is None:
        report.problems.append(f"{directory / MANIFEST_NAME}: missing")
    else:
        on_disk = {p.name for p in checkpoint.files}
        recorded = set(manifest["shards"])
        for name in sorted(on_disk - recorded):
            report.problems.append(f"{directory / name}: not recorded in the manifest")
        for name in sorted(recorded):
            problem = check_file(directory / name, manifest["shards"][name])
            report.shards_checked += 1
            if problem:
                hit = _tensors_hit(checkpoint, directory / name, manifest["shards"][name])
                report.problems.append(f"{directory / name}: {problem}{hit}")
    try:
        recipe = read_recipe(directory / RECIPE_NAME)
    except FormatError as exc:
        report.problems.append(str(exc))
        return report
    try:
        sft = _open_input(recipe["sft"])
        dpo = _open_input(recipe["dpo"])
    except (FormatError, UsageError, HubError) as exc:
        report.problems.append(f"cannot recompute from the recipe's inputs: {exc}")
        return report
    kernel = load_backend(resolve_backend(backend))
    names = _sample(checkpoint.tensors, sample, seed)
    maps: dict[InputFile, MappedFile] = {}
    try:
        for name in names:
            entry = recipe["tensors"].get(name)
            if entry is None:
                report.problems.append(f"tensor {name!r} is not in the recipe")
                continue
            problem = _recompute(name, entry, checkpoint.tensors[name], dpo.tensors.get(name),
                                 sft.tensors.get(name), kernel, maps)
            report.tensors_recomputed.append(name)
            if problem:
                report.problems.append(f"{checkpoint.tensors[name].file}: tensor {name!r}: {problem}")
    finally:
        for m in maps.values():
            m.close()
    return report


def _tensors_hit(checkpoint, path: Path, record: dict, shown: int = 3) -> str:
    """``; tensors 'a', 'b' and 2 more`` for the tensors in the byte ranges that differ."""
    bad = differing_ranges(path, record) if path.is_file() else []
    if not bad:
        return ""
    hit = [t.name for t in checkpoint.tensors.values() if t.file.name == path.name
           and any(t.start < off + n and off < t.end for off, n in bad)]
    if not hit:
        return "; in the header"
    more = f" and {len(hit) - shown} more" if len(hit) > shown else ""
    return f"; tensor(s) {', '.join(repr(n) for n in hit[:shown])}{more}"


def _open_input(location: str):
    """A recipe's input: a local checkpoint, or a repo id at a commit, read on the Hub (range
    requests: nothing is downloaded) or, offline, from the local cache."""
    from ..hub import MERGE_FILES, REPO_ID, endpoint

    m = REPO_ID.match(location)
    if Path(location).exists() or not m:
        return open_checkpoint(location)
    from huggingface_hub import snapshot_download

    try:
        return open_checkpoint(snapshot_download(
            m.group("repo"), revision=m.group("revision"), allow_patterns=MERGE_FILES,
            local_files_only=True, endpoint=endpoint()))
    except (OSError, ValueError, FormatError):  # not (all) in the cache: read it on the Hub
        from ..sources.hub import open_checkpoint as open_on_hub

        return open_on_hub(location)


def read_recipe(path: Path) -> dict:
    """The resolved recipe a merge wrote, checked for what verify reads; FormatError if not."""
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot parse recipe ({exc})") from None
    if not (isinstance(recipe, dict) and isinstance(recipe.get("sft"), str)
            and isinstance(recipe.get("dpo"), str) and isinstance(recipe.get("tensors"), dict)):
        raise FormatError(f"{path}: not an expo-stream recipe (needs sft, dpo and tensors)")
    for name, entry in recipe["tensors"].items():
        if not (isinstance(entry, dict) and (entry.get("copied") is True or (
                isinstance(entry.get("alpha"), (int, float)) and not isinstance(entry["alpha"], bool)))):
            raise FormatError(f"{path}: tensor {name!r} has no alpha and is not marked copied")
    return recipe


def check_shard(plan, index: int, paths: list[Path], backend: str, limit: int = 64 * 2**20) -> None:
    """Recompute one merged tensor of shard ``index`` from the inputs, through their sources,
    and compare it with each written file (one per schedule) before the shard is published.

    The tensor is drawn at random (seeded by the shard) among those of at most ``limit`` bytes
    (the smallest when none is), so a push re-reads little of the inputs.

    Raises:
        OutputError: the written bytes differ from the recomputation.
    """
    from ..errors import OutputError
    from ..sources import open_once

    shard = plan.shards[index]
    merged = [t for t in shard.tensors if t.sft is not None]
    if not merged:
        return
    small = [t for t in merged if t.nbytes <= limit] or [min(merged, key=lambda t: t.nbytes)]
    job = random.Random(index).choice(small)
    kernel = load_backend(resolve_backend(backend))
    inputs = [open_once(job.dpo.file), open_once(job.sft.file)]
    out_dtype = NUMPY_DTYPES[job.dtype]
    try:
        for lo in range(0, job.numel, DEFAULT_CHUNK_ELEMENTS):
            hi = min(lo + DEFAULT_CHUNK_ELEMENTS, job.numel)
            d, s = (_read(f, info, lo, hi) for f, info in zip(inputs, (job.dpo, job.sft)))
            for alpha, path in zip(job.alphas, paths):
                want = np.empty(hi - lo, out_dtype)
                apply(kernel, d, s, alpha, want)
                got = np.fromfile(path, np.uint8, (hi - lo) * out_dtype.itemsize,
                                  offset=len(shard.header) + job.offset + lo * out_dtype.itemsize)
                if not np.array_equal(got, want.view(np.uint8)):
                    raise OutputError(f"{path}: tensor {job.name!r} differs from its recomputation "
                                      "from the inputs; not publishing it")
    finally:
        for f in inputs:
            f.close()


def _read(reader, info: TensorInfo, lo: int, hi: int) -> np.ndarray:
    dtype = NUMPY_DTYPES[info.dtype]
    out = np.empty(hi - lo, dtype)
    view = memoryview(out.view(np.uint8))
    if reader.read_at(info.start + lo * dtype.itemsize, view) != view.nbytes:
        raise FormatError(f"{info.file}: ends before tensor {info.name!r} does")
    return out


def _sample(tensors: dict[str, TensorInfo], count: int, seed: int) -> list[str]:
    names = list(tensors)
    if count >= len(names):
        return names
    largest = max(names, key=lambda n: tensors[n].nbytes)
    rest = [n for n in names if n != largest]
    return [largest] + random.Random(seed).sample(rest, max(0, count - 1))


def _recompute(name, entry, out: TensorInfo, d: TensorInfo | None, s: TensorInfo | None,
               kernel, maps) -> str | None:
    def view(info: TensorInfo, lo: int, hi: int) -> np.ndarray:
        if info.file.source != "local":  # an input on the Hub: a range request
            return _read(open_once(info.file), info, lo, hi)
        m = maps.get(info.file) or maps.setdefault(info.file, MappedFile(info.file.path))
        size = NUMPY_DTYPES[info.dtype].itemsize
        return m.view(info.start + lo * size, info.start + hi * size, NUMPY_DTYPES[info.dtype])

    if d is None or d.shape != out.shape:
        return "DPO input lacks it or its shape changed"
    copied = entry.get("copied", False)
    if not copied and (s is None or s.shape != out.shape):
        return "SFT input lacks it or its shape changed"
    out_dtype = NUMPY_DTYPES[out.dtype]
    for lo in range(0, out.numel, DEFAULT_CHUNK_ELEMENTS):
        hi = min(lo + DEFAULT_CHUNK_ELEMENTS, out.numel)
        got = view(out, lo, hi)
        if copied:
            want = view(d, lo, hi)
        else:
            want = np.empty(hi - lo, out_dtype)
            apply(kernel, view(d, lo, hi), view(s, lo, hi), float(entry["alpha"]), want)
        mismatch = np.nonzero(np.any(got.view(np.uint8).reshape(hi - lo, -1)
                                     != want.view(np.uint8).reshape(hi - lo, -1), axis=1))[0]
        if mismatch.size:
            return (f"{mismatch.size} element(s) differ from the recomputation, "
                    f"first at index {lo + int(mismatch[0])}")
    return None
