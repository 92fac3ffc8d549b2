"""``mm preprocess``: RLHF-V rows and per-sample folders to a DatasetDict; bad rows reported."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("datasets")
pytest.importorskip("transformers")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from click.testing import CliRunner  # noqa: E402

from expo_stream.cli import main  # noqa: E402
from expo_stream.multimodal import data  # noqa: E402
from expo_stream.multimodal.tiny import square_png, tiny_tokenizer, toy_rows  # noqa: E402


def published_rows() -> list[dict]:
    """Toy rows as the published dataset stores them, plus one bad row of each kind."""
    rows = toy_rows(12)
    rows[1]["text"] = "{not json"
    rows[4]["image"] = None
    rows[6]["image"] = {"bytes": b"not an image", "path": None}
    rows[9]["text"] = json.dumps({"question": "q?", "chosen": "a", "rejected": ""})
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_parquet_rows_with_bad_rows_counted(tmp_path, tokenizer):
    pq.write_table(pa.Table.from_pylist(published_rows()), tmp_path / "rlhf-v.parquet")
    ds, report = data.build(tmp_path / "rlhf-v.parquet", tokenizer)
    assert report.read == 12 and report.kept == 8 and len(ds["train"]) == 8
    assert dict(report.bad) == {"unparsable text": 1, "missing image": 1, "unreadable image": 1,
                                "missing rejected": 1}
    assert sorted(r["row"] for r in report.bad_rows) == [1, 4, 6, 9]
    assert all(r["file"].endswith("rlhf-v.parquet") for r in report.bad_rows)
    row = ds["train"][0]
    assert set(row) >= {"id", "prompt", "chosen", "rejected", "image", "chosen_segments",
                        "rejected_segments", "idx", "ds_name", "origin_dataset", "origin_split"}
    assert row["image"].size == (32, 32)
    assert row["id"] == f"toy-squares/{row['idx']}"
    (a, b), = row["chosen_segments"]
    (c, d), = row["rejected_segments"]
    assert row["chosen"][a:b] in {"red", "green", "blue", "yellow"}
    assert row["rejected"][c:d] != row["chosen"][a:b]


def test_per_sample_json_folder(tmp_path, tokenizer):
    (tmp_path / "images").mkdir()
    for i, row in enumerate(toy_rows(5)):
        (tmp_path / "images" / f"{i}.png").write_bytes(row["image"]["bytes"])
        sample = {**json.loads(row["text"]), "image_path": f"images/{i}.png", "idx": i}
        (tmp_path / f"{i:03d}.json").write_text(json.dumps(sample))
    (tmp_path / "005.json").write_text(json.dumps({"question": "q", "chosen": "a b",
                                                   "rejected": "a c", "image_path": "nope.png"}))
    ds, report = data.build(tmp_path, tokenizer)
    assert report.kept == 5 and dict(report.bad) == {"missing image": 1}
    assert report.bad_rows[0]["file"].endswith("005.json")
    assert ds["train"][0]["image"].size == (32, 32)


def test_jsonl_with_image_paths(tmp_path, tokenizer):
    (tmp_path / "red.png").write_bytes(square_png("red"))
    rows = [{"text": json.dumps({"question": "q", "chosen": "It is red.", "rejected": "It is blue."}),
             "image": "red.png", "idx": 0}, "not an object"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    ds, report = data.build(tmp_path / "d.jsonl", tokenizer)
    assert report.kept == 1 and dict(report.bad) == {"not an object": 1, "unparsable json": 1}


def test_fraction_is_deterministic_and_nested(tokenizer):
    rows = toy_rows(40)
    half1, _ = data.build(rows, tokenizer, fraction=0.5)
    half2, _ = data.build(list(reversed(rows)), tokenizer, fraction=0.5)
    most, _ = data.build(rows, tokenizer, fraction=0.75)
    ids = lambda d: set(d["train"]["id"])  # noqa: E731
    assert len(ids(half1)) == 20 and ids(half1) == ids(half2)
    assert len(ids(most)) == 30 and ids(half1) < ids(most)
    split, report = data.build(rows, tokenizer, test_size=0.25)
    assert report.splits == {"train": 30, "test": 10}
    assert not ids(split) & set(split["test"]["id"])


def test_cli_preprocess_writes_dataset_and_report(tmp_path):
    pq.write_table(pa.Table.from_pylist(published_rows()), tmp_path / "in.parquet")
    out = tmp_path / "ds"
    r = CliRunner().invoke(main, ["mm", "preprocess", str(tmp_path / "in.parquet"), "--out", str(out),
                                  "--tokenizer", "tiny", "--fraction", "0.5"])
    assert r.exit_code == 0, r.output
    assert "bad rows: missing image 1, missing rejected 1, unparsable text 1, unreadable image 1" in r.output
    import datasets

    assert len(datasets.load_from_disk(str(out))["train"]) == 4
    report = json.loads((out / data.REPORT_NAME).read_text())
    assert report["kept"] == 4 and len(report["bad_rows"]) == 4
    assert not list(tmp_path.glob(".*partial"))
    again = CliRunner().invoke(main, ["mm", "preprocess", str(tmp_path / "in.parquet"), "--out",
                                      str(out), "--tokenizer", "tiny"])
    assert again.exit_code == 2 and "exists" in again.output


def test_cli_preprocess_missing_source(tmp_path):
    r = CliRunner().invoke(main, ["mm", "preprocess", str(tmp_path / "nope"), "--out",
                                  str(tmp_path / "o"), "--tokenizer", "tiny"])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "nope" in r.output
    assert not (tmp_path / "o").exists()
