"""The ``mm`` command group without its extra installed."""

from __future__ import annotations

import importlib.util

from click.testing import CliRunner

from expo_stream.cli import main


def test_mm_commands_name_missing_packages(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("peft", "datasets") else real(name, *a))
    r = CliRunner().invoke(main, ["mm", "export", "run", "--out", "x"])
    assert r.exit_code == 1
    assert "the mm commands need peft, datasets: pip install 'expo-stream[mm]'" in r.output
