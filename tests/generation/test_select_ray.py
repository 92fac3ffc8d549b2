"""select-alpha on a two-node Ray cluster: the local run's report numbers, and a failed
candidate reported while the others complete (issue 14)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="select-alpha --executor ray needs ray: "
                                        "pip install 'expo-stream[ray]'")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from expo_stream.generation.generate import GREEDY  # noqa: E402
from expo_stream.generation.score import ImplicitRewardScorer  # noqa: E402
from expo_stream.generation.select import select_alpha  # noqa: E402

from ..helpers import two_node_ray_cluster  # noqa: E402
from .tiny_lm import tiny_sft_dpo  # noqa: E402

PROMPTS = [{"instruction": "say hello", "dataset": "t"}, {"instruction": "name a color", "dataset": "t"}]
SAMPLING = replace(GREEDY, max_new_tokens=4)


@pytest.fixture(scope="module")
def cluster():
    with two_node_ray_cluster() as c:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        yield c


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_sft_dpo(tmp_path_factory.mktemp("pair"))


class FailsAtAlpha2(ImplicitRewardScorer):
    def score(self, records):
        if records[0]["generator"] == "expo-alpha-2":
            raise ValueError("scorer broke on this candidate")
        return super().score(records)


def numbers(report):
    return [{k: v for k, v in row.items() if k != "model"} for row in report["rows"]]


def test_ray_sweep_gives_the_local_report_and_survives_a_failed_candidate(cluster, pair, tmp_path):
    sft, dpo = pair

    def scorer():
        return ImplicitRewardScorer(sft, dpo, beta=0.1, batch_size=2)

    run = dict(scorer_factory=scorer, sampling=SAMPLING, keep="all")
    local = select_alpha(sft, dpo, [0.5, 2.0], PROMPTS, tmp_path / "local", **run)
    remote = select_alpha(sft, dpo, [0.5, 2.0], PROMPTS, tmp_path / "ray", executor="ray", **run)
    assert numbers(remote) == numbers(local)
    assert {k: v for k, v in remote.items() if k != "rows"} == \
        {k: v for k, v in local.items() if k != "rows"}
    for row in remote["rows"]:
        model = Path(row["model"])
        assert model.parent == (tmp_path / "ray" / "candidates").resolve()
        local_model = tmp_path / "local" / "candidates" / model.name
        assert (model / "model.safetensors").read_bytes() == \
            (local_model / "model.safetensors").read_bytes()
    assert (tmp_path / "ray" / "report.md").read_text() == (tmp_path / "local" / "report.md").read_text()

    run["scorer_factory"] = lambda: FailsAtAlpha2(sft, dpo, beta=0.1, batch_size=2)
    broken = select_alpha(sft, dpo, [0.5, 2.0], PROMPTS, tmp_path / "broken", executor="ray", **run)
    rows = {row["alpha"]: row for row in broken["rows"]}
    assert "scorer broke on this candidate" in rows[2.0]["error"]
    assert numbers({"rows": [rows[0.0], rows[0.5]]}) == numbers(local)[:2]
    assert "failed: ValueError: scorer broke" in (tmp_path / "broken" / "report.md").read_text()
    assert json.loads((tmp_path / "broken" / "report.json").read_text())["rows"][2]["model"] is None
