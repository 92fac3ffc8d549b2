"""check-outputs on the seed's real files and on hand-made records."""

from __future__ import annotations

import json

from click.testing import CliRunner

from expo_stream.cli import main
from expo_stream.generation.diagnostics import diagnose, is_repetitive, strip_echo


def run_json(path) -> dict:
    r = CliRunner().invoke(main, ["check-outputs", str(path), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_seed_outputs_are_all_echoes(seed_results):
    """The reproduction's generate.py decoded prompt + answer: every output echoes."""
    report = run_json(seed_results / "expo_pred_dpo_train0.05.jsonl")
    assert (report["total"], report["echo"], report["instruction_only"]) == (805, 805, 89)
    assert report["instruction_only_verbatim"] == 84  # the other 5 add only a final punctuation mark
    layerwise = run_json(seed_results / "expo_50_preds_layerwise.jsonl")
    assert (layerwise["total"], layerwise["echo"], layerwise["instruction_only"]) == (50, 50, 5)


def test_strip_echo_repairs_the_seed_file(seed_results, tmp_path):
    out = tmp_path / "fixed.json"
    r = CliRunner().invoke(main, ["check-outputs", str(seed_results / "expo_pred_dpo_train0.05.jsonl"),
                                  "--strip-echo", str(out)])
    assert r.exit_code == 0, r.output
    fixed = run_json(out)
    # 89 instruction-only outputs, plus one that is the instruction twice over, become empty.
    assert fixed["echo"] == 0 and fixed["empty"] == 90 and fixed["total"] == 805


def test_hand_checked_records():
    rows = [
        {"instruction": "Name a color.", "output": "name  a COLOR.\nBlue."},
        {"instruction": "Say hi", "output": "Say hi!"},
        {"instruction": "Say hi", "output": "Hello there."},
        {"instruction": "x", "output": "   "},
        {"instruction": "Count", "output": "one two three four one two three four one two three four"},
    ]
    report = diagnose(rows)
    assert report["total"] == 5
    assert report["echo"] == 2 and report["instruction_only"] == 1
    assert report["instruction_only_verbatim"] == 0
    assert report["empty"] == 1 and report["repetitive"] == 1
    assert [r["output"] for r in strip_echo(rows)[:3]] == ["Blue.", "", "Hello there."]


def test_repetition_threshold():
    assert not is_repetitive("a b c d e f g h")
    assert is_repetitive("w x y z " * 3 + "a b c d e f g h i j")  # 3*4 = 12 of 22 words


def test_bad_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[{"instruction": "a"}]')
    r = CliRunner().invoke(main, ["check-outputs", str(p)])
    assert r.exit_code == 1 and "record 0 has no string `output`" in r.output


def test_an_echo_with_other_final_punctuation_is_an_echo():
    rows = [{"instruction": "Name a color.", "output": "Name a color!!! Blue."},
            {"instruction": "Name a color.", "output": "name a color?"},
            {"instruction": "Name a color.", "output": "Name a colorful bird: a parrot."}]
    report = diagnose(rows)
    assert report["echo"] == 2 and report["instruction_only"] == 1  # "colorful" is no echo
    assert report["instruction_only_verbatim"] == 0
    assert [r["output"] for r in strip_echo(rows)] == ["Blue.", "", rows[2]["output"]]
