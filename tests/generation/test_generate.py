"""expo-stream generate on a tiny random Llama: chat template in, only new tokens out."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from expo_stream.cli import main  # noqa: E402
from expo_stream.generation import generate as gen  # noqa: E402

from .tiny_lm import tiny_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("lm") / "tiny-chat")


def prompts_file(path, n):
    rows = [{"instruction": f"say hello {'friend ' * i}".strip(), "dataset": "toy"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_chat_template_and_only_new_tokens(model_dir, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    seen = []
    real = LlamaForCausalLM.generate

    def spy(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        seen.append((kwargs["input_ids"].clone(), result.clone()))
        return result

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    out = tmp_path / "out.json"
    r = CliRunner().invoke(main, ["generate", "--model", str(model_dir), "--prompts",
                                  str(prompts_file(tmp_path / "p.jsonl", 3)), "--out", str(out),
                                  "--greedy", "--max-new-tokens", "6", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    records = json.loads(out.read_text())
    assert [x["generator"] for x in records] == ["tiny-chat"] * 3
    assert [x["dataset"] for x in records] == ["toy"] * 3
    tok = gen.load_model(model_dir, "cpu", None)[1]
    inputs, outputs = seen[0]
    prompt_text = tok.decode(inputs[1])
    assert prompt_text.startswith("<s>") and "<|user|> say hello friend" in prompt_text
    assert prompt_text.rstrip().endswith("<|assistant|>")
    # Left padding: the shorter prompt of the batch is padded on the left.
    assert inputs[0][0].item() == tok.pad_token_id
    new = outputs[:, inputs.shape[1]:]
    assert records[0]["output"] == tok.decode(new[0], skip_special_tokens=True).strip()
    for x in records:
        assert not x["output"].startswith(x["instruction"])


def test_resume_skips_finished_prompts(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    args = ["generate", "--model", str(model_dir), "--out", str(out), "--greedy",
            "--max-new-tokens", "4", "--batch-size", "1"]
    r = CliRunner().invoke(main, args + ["--prompts", str(prompts_file(tmp_path / "a.jsonl", 2))])
    assert r.exit_code == 0, r.output
    first = json.loads(out.read_text())
    calls = []
    from transformers import LlamaForCausalLM

    real = LlamaForCausalLM.generate
    monkeypatch.setattr(LlamaForCausalLM, "generate",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    r = CliRunner().invoke(main, args + ["--prompts", str(prompts_file(tmp_path / "b.jsonl", 4))])
    assert r.exit_code == 0, r.output
    assert f"resuming: 2 of 4 prompts already answered in {out}" in r.output
    records = json.loads(out.read_text())
    assert len(calls) == 2 and len(records) == 4 and records[:2] == first


@pytest.mark.parametrize("change", [["--max-new-tokens", "5"], ["--model", "OTHER"],
                                    ["--batch-size", "2"], ["--template", "plain"]])
def test_resume_refuses_an_output_made_otherwise(model_dir, tmp_path, monkeypatch, change):
    other = tiny_model_dir(tmp_path / "other", seed=3)
    out = tmp_path / "out.json"
    prompts = str(prompts_file(tmp_path / "a.jsonl", 2))
    args = {"--model": str(model_dir), "--out": str(out), "--max-new-tokens": "4",
            "--batch-size": "1", "--template": "chat", "--prompts": prompts}
    flat = lambda d: ["generate"] + [x for kv in d.items() for x in kv] + ["--greedy"]  # noqa: E731
    assert CliRunner().invoke(main, flat(args)).exit_code == 0
    before = out.read_bytes()
    args[change[0]] = str(other) if change[1] == "OTHER" else change[1]
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("loaded a model before refusing"))
    r = CliRunner().invoke(main, flat(args))
    assert r.exit_code == 2 and "was made with another" in r.output and "--overwrite" in r.output
    assert out.read_bytes() == before
    monkeypatch.undo()
    r = CliRunner().invoke(main, flat(args) + ["--overwrite"])
    assert r.exit_code == 0, r.output
    settings = json.loads(gen.settings_path(out).read_text())
    recorded = {"--max-new-tokens": settings["sampling"]["max_new_tokens"],
                "--model": settings["model"], "--batch-size": settings["batch_size"],
                "--template": settings["template"]}[change[0]]
    assert str(recorded) == args[change[0]]  # the new run's settings, not the old


def test_sampled_outputs_resume_as_if_uninterrupted(model_dir, tmp_path):
    """Each batch is seeded by its first prompt's index, so a resumed run samples the same."""
    base = ["generate", "--model", str(model_dir), "--max-new-tokens", "5", "--batch-size", "1"]
    full = tmp_path / "full.json"
    r = CliRunner().invoke(main, base + ["--prompts", str(prompts_file(tmp_path / "p3.jsonl", 3)),
                                         "--out", str(full)])
    assert r.exit_code == 0, r.output
    part = tmp_path / "part.json"
    for n in (1, 3):
        r = CliRunner().invoke(main, base + ["--prompts", str(prompts_file(tmp_path / f"q{n}.jsonl", n)),
                                             "--out", str(part)])
        assert r.exit_code == 0, r.output
    assert json.loads(part.read_text()) == json.loads(full.read_text())


def test_no_chat_template_is_a_clear_error(tmp_path):
    plain = tiny_model_dir(tmp_path / "plain", chat_template=None)
    p = prompts_file(tmp_path / "p.txt", 1)
    r = CliRunner().invoke(main, ["generate", "--model", str(plain), "--prompts", str(p),
                                  "--out", str(tmp_path / "o.json"), "--greedy", "--max-new-tokens", "2"])
    assert r.exit_code == 2 and "--template plain" in r.output
    r = CliRunner().invoke(main, ["generate", "--model", str(plain), "--prompts", str(p),
                                  "--out", str(tmp_path / "o.json"), "--greedy",
                                  "--max-new-tokens", "2", "--template", "plain"])
    assert r.exit_code == 0, r.output


def test_prompt_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\nsecond\n")
    assert [p["instruction"] for p in gen.load_prompts(tmp_path / "a.txt")] == ["first", "second"]
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "do", "input": "this", "dataset": "d"}]))
    assert gen.load_prompts(tmp_path / "b.json") == [{"instruction": "do\n\nthis", "dataset": "d"}]
