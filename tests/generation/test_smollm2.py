"""A real chat model, offline: SmolLM2-135M-Instruct (the `smollm2` fixture in conftest.py).

`expo-stream generate` answers through the chat template: no output may echo its instruction.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from expo_stream.cli import main  # noqa: E402


def test_generation_uses_the_chat_template_and_never_echoes(smollm2, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"instruction": "What is the capital of France?", "dataset": "toy"},
            {"instruction": "Name three primary colors.", "dataset": "toy"},
            {"instruction": "Write one sentence about the sea.", "dataset": "toy"}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out.json"
    r = CliRunner().invoke(main, ["generate", "--model", str(smollm2), "--prompts", str(prompts),
                                  "--out", str(out), "--greedy", "--max-new-tokens", "24",
                                  "--batch-size", "3"])
    assert r.exit_code == 0, r.output
    records = json.loads(out.read_text())
    assert [x["generator"] for x in records] == ["SmolLM2-135M-Instruct"] * 3
    r = CliRunner().invoke(main, ["check-outputs", str(out), "--json"])
    report = json.loads(r.output)
    assert report["total"] == 3 and report["echo"] == 0 and report["empty"] == 0
    assert "paris" in records[0]["output"].lower()
    for x in records:
        assert "<|im_start|>" not in x["output"] and "user" not in x["output"][:10].lower()
