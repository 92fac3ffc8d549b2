"""Every option of every command says what it does (``--help``), and bad values are refused
before anything is loaded."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from expo_stream.cli import main


def commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_every_option_has_help():
    missing = [f"{' '.join(path)} {param.opts[0]}"
               for path, command in commands(main) for param in command.params
               if isinstance(param, click.Option) and not param.help]
    assert not missing, missing


@pytest.mark.parametrize("args", [
    ["generate", "--model", "m", "--prompts", "p", "--out", "o", "--max-new-tokens", "-5"],
    ["generate", "--model", "m", "--prompts", "p", "--out", "o", "--top-p", "1.5"],
    ["generate", "--model", "m", "--prompts", "p", "--out", "o", "--temperature", "0"],
    ["select-alpha", "--sft", "s", "--dpo", "d", "--alphas", "1", "--prompts", "p", "--out", "o",
     "--max-new-tokens", "0"],
    ["score", "--outputs", "o", "--implicit-reward", "--beta", "-1"],
    ["mm", "train-ddpo", "--tiny", "--out", "o", "--warmup-ratio", "2"],
])
def test_bad_values_are_refused_before_loading(args):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "Invalid value" in r.output


def test_version_names_the_kernel_and_its_simd_level():
    from expo_stream.kernels import describe_backend, resolve_backend

    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and f"kernel: {describe_backend(resolve_backend())}" in r.output


def test_verbose_and_quiet_work_after_the_command_too(tmp_path):
    import subprocess
    import sys

    from .helpers import tiny_pair

    sft, dpo, _, _ = tiny_pair(tmp_path)
    base = [sys.executable, "-m", "expo_stream.cli", "merge", "--sft", str(sft), "--dpo", str(dpo),
            "--alpha", "0.3"]
    loud = subprocess.run(base + ["--out", str(tmp_path / "a"), "-v"], capture_output=True, text=True)
    assert loud.returncode == 0 and "INFO expo_stream.execute.merge: merging" in loud.stderr
    quiet = subprocess.run(base + ["--out", str(tmp_path / "b"), "-q"], capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == ""  # no progress bar, no log
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--quiet"])
    assert r.exit_code == 0
