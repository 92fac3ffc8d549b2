"""``mm preprocess``: RLHF-V preference data to a ``datasets.DatasetDict``.

Accepted inputs:

- the published dataset's rows (parquet, JSON or JSONL files, or a folder of parquet files):
  ``text`` is a JSON string ``{"question", "chosen", "rejected"}``; ``image`` is PNG/JPEG bytes,
  a ``{"bytes", "path"}`` struct (how ``datasets`` stores images in parquet) or a path;
  ``idx``, ``ds_name``, ``origin_dataset`` and ``origin_split`` are carried along;
- a folder of one-JSON-per-sample files, each with ``image_path`` (relative to that file) and
  either ``text`` as above or ``question``/``chosen``/``rejected`` fields.

Each kept row becomes ``id, prompt, chosen, rejected, image`` plus ``chosen_segments`` and
``rejected_segments``: the character spans of the corrected segments (:mod:`.segments`) found
with the tokenizer the model will train with. A row that cannot be used (unparsable text, a
missing field, a missing or unreadable image) is counted under its reason and listed in the
report with its file and row number; nothing is dropped without a line in the report.
"""

from __future__ import annotations

import io
import os
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ..errors import FormatError, UsageError
from ..format.writer import publish
from .segments import char_spans, corrected_token_ranges, tokenize_with_offsets

log = logging.getLogger(__name__)

REPORT_NAME = "preprocess_report.json"
CARRIED = ("idx", "ds_name", "origin_dataset", "origin_split")


class BadRow(Exception):
    """A row that cannot be used; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Report:
    read: int = 0
    kept: int = 0
    bad: Counter = field(default_factory=Counter)
    bad_rows: list[dict] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "bad": dict(self.bad),
                "bad_rows": self.bad_rows, "splits": self.splits}

    def summary(self) -> str:
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items())) or "none"
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        return f"read {self.read} rows; bad rows: {bad}; kept {self.kept} ({splits})"


def read_rows(source: Path):
    """Yield ``(file, row_number, raw_row, base_dir)`` from any accepted input form."""
    source = Path(source)
    if not source.exists():
        raise UsageError(f"{source}: no such file or directory")
    if source.is_dir():
        files = sorted(source.glob("*.parquet")) or sorted(source.glob("*.jsonl"))
        if files:
            for f in files:
                yield from read_rows(f)
            return
        samples = sorted(source.glob("*.json"))
        if not samples:
            raise UsageError(f"{source}: no *.parquet, *.jsonl or per-sample *.json files")
        for f in samples:
            try:
                row = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                row = BadRow("unparsable json", str(exc))
            yield f, 0, row, f.parent
        return
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(source)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise FormatError(f"{source}: not a readable parquet file ({exc})") from None
        n = 0
        for batch in table.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield source, n, row, source.parent
                n += 1
        return
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{source}: cannot read ({exc})") from None
    if source.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    row = BadRow("unparsable json", str(exc))
                yield source, n, row, source.parent
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{source}: not JSON ({exc})") from None
    for n, row in enumerate(data if isinstance(data, list) else [data]):
        yield source, n, row, source.parent


def parse_row(row, base: Path) -> dict:
    """One raw row to ``{prompt, chosen, rejected, image_bytes, ...carried}``; raises BadRow."""
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow("not an object")
    text = row.get("text")
    if text is None:
        text = {k: row.get(k) for k in ("question", "chosen", "rejected")}
    elif isinstance(text, str):
        try:
            text = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRow("unparsable text", str(exc)) from None
    if not isinstance(text, dict):
        raise BadRow("unparsable text", "text is not a JSON object")
    for key in ("question", "chosen", "rejected"):
        if not isinstance(text.get(key), str) or not text[key].strip():
            raise BadRow(f"missing {key}")
    image = _image_bytes(row.get("image", row.get("image_path")), base)
    out = {"prompt": text["question"], "chosen": text["chosen"], "rejected": text["rejected"],
           "image": image}
    for key in CARRIED:
        value = row.get(key)
        out[key] = None if value is None else str(value)
    return out


def _image_bytes(image, base: Path) -> bytes:
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if image is None or image == b"" or image == "":
        raise BadRow("missing image")
    if isinstance(image, str):
        path = Path(image) if os.path.isabs(image) else base / image
        try:
            image = path.read_bytes()
        except OSError as exc:
            raise BadRow("missing image", f"{path}: {exc.strerror}") from None
    if not isinstance(image, (bytes, bytearray)):
        raise BadRow("missing image", f"unsupported image value {type(image).__name__}")
    try:
        with Image.open(io.BytesIO(image)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadRow("unreadable image", str(exc)) from None
    return bytes(image)


def segments(tokenizer, chosen: str, rejected: str) -> tuple[list[list[int]], list[list[int]]]:
    """Character spans of the corrected segments in chosen and rejected (see :mod:`.segments`)."""
    ids_c, offsets_c = tokenize_with_offsets(tokenizer, chosen)
    ids_r, offsets_r = tokenize_with_offsets(tokenizer, rejected)
    ranges_c, ranges_r = corrected_token_ranges(ids_c, ids_r)
    return ([list(s) for s in char_spans(offsets_c, ranges_c)],
            [list(s) for s in char_spans(offsets_r, ranges_r)])


def _rank(key: str, salt: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{salt}:{key}".encode())


def build(source, tokenizer, *, fraction: float = 1.0, test_size: float = 0.0):
    """Read, check and split; returns ``(DatasetDict, Report)``.

    ``source`` is a path in any accepted form, or a list of raw rows already in memory.

    ``fraction`` keeps ``round(fraction * n)`` rows, chosen by a hash of each row's id (so the
    subset does not depend on file order and a smaller fraction is a subset of a larger one);
    ``test_size`` moves that share of the kept rows, by another hash, to a ``test`` split.
    """
    import datasets

    if not 0 < fraction <= 1:
        raise UsageError(f"--fraction must be in (0, 1], got {fraction}")
    if not 0 <= test_size < 1:
        raise UsageError(f"--test-size must be in [0, 1), got {test_size}")
    report, rows = Report(), []
    if isinstance(source, list):
        found = ((Path("<rows>"), n, raw, Path.cwd()) for n, raw in enumerate(source))
    else:
        found = read_rows(Path(source))
    for file, n, raw, base in found:
        report.read += 1
        try:
            row = parse_row(raw, base)
        except BadRow as bad:
            report.bad[bad.reason] += 1
            report.bad_rows.append({"file": str(file), "row": n, "reason": bad.reason,
                                    "detail": bad.detail})
            continue
        row["id"] = (f"{row['ds_name']}/{row['idx']}" if row["idx"] is not None
                     else f"{file.name}:{n}")
        row["chosen_segments"], row["rejected_segments"] = segments(tokenizer, row["chosen"],
                                                                   row["rejected"])
        rows.append(row)
    if report.bad:
        log.warning("skipped %d bad rows: %s", sum(report.bad.values()), dict(report.bad))
    if not rows:
        raise FormatError(f"{source}: no usable rows ({report.summary()})")
    keep = {r["id"] for r in sorted(rows, key=lambda r: _rank(r["id"], "fraction"))
            [:max(1, round(fraction * len(rows)))]}
    rows = [r for r in rows if r["id"] in keep]
    test = {r["id"] for r in sorted(rows, key=lambda r: _rank(r["id"], "test"))
            [:round(test_size * len(rows))]}
    features = datasets.Features({
        "id": datasets.Value("string"), "prompt": datasets.Value("string"),
        "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
        "image": datasets.Image(),
        "chosen_segments": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
        "rejected_segments": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
        **{k: datasets.Value("string") for k in CARRIED},
    })

    def split(selected):
        return datasets.Dataset.from_list(
            [{**r, "image": {"bytes": r["image"], "path": None}} for r in selected],
            features=features)

    parts = {"train": split([r for r in rows if r["id"] not in test])}
    if test:
        parts["test"] = split([r for r in rows if r["id"] in test])
    report.kept = len(rows)
    report.splits = {k: len(v) for k, v in parts.items()}
    return datasets.DatasetDict(parts), report


def preprocess(source, out, tokenizer, *, fraction: float = 1.0, test_size: float = 0.0,
               overwrite: bool = False) -> Report:
    """``build`` and save to ``out`` (``save_to_disk`` plus ``preprocess_report.json``).

    The dataset is written to a hidden sibling and renamed into place when complete.
    """
    reports = []

    def write(path: Path) -> None:
        dataset, report = build(source, tokenizer, fraction=fraction, test_size=test_size)
        dataset.save_to_disk(str(path))
        (path / REPORT_NAME).write_text(json.dumps(report.as_dict(), indent=1) + "\n")
        reports.append(report)

    publish(Path(out), write, inputs=[Path(source)], overwrite=overwrite)
    return reports[0]


def splits(source, tokenizer):
    """``(train, test or None)`` of a saved ``DatasetDict``, or of raw data preprocessed in memory
    (then there is no test split)."""
    import datasets

    if isinstance(source, (str, Path)) and (Path(source) / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(source))
        if "train" not in saved:
            raise FormatError(f"{source}: no `train` split (has {', '.join(saved)})")
        return saved["train"], saved.get("test")
    dataset, report = build(source, tokenizer)
    log.info("preprocessed in memory: %s", report.summary())
    return dataset["train"], None
