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
