"""Bounded memory, small and honest: a tensor far larger than the chunk streams through.

The full-size version (a 1 GiB embedding, peak RssAnon under 150 MB) is bench/peak_memory.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from expo_stream.format.writer import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from rss import run_sampled  # noqa: E402


def test_peak_anonymous_memory_does_not_grow_with_tensor_size(tmp_path):
    rng = np.random.default_rng(0)
    n = 48 * 2**20  # 96 MiB per input in BF16, 96 MiB of output
    base = rng.standard_normal(n // 64, dtype=np.float32)
    sft = np.tile(base, 64).astype(ml_dtypes.bfloat16)
    save_checkpoint(tmp_path / "sft", {"model.embed_tokens.weight": sft.reshape(-1, 1024)})
    del sft
    dpo = (np.tile(base, 64) + 1e-3).astype(ml_dtypes.bfloat16)
    save_checkpoint(tmp_path / "dpo", {"model.embed_tokens.weight": dpo.reshape(-1, 1024)})
    del dpo, base
    code = ("import sys, expo_stream; expo_stream.merge(sys.argv[1], sys.argv[2], sys.argv[3], "
            "alpha=0.3, chunk_elements=2**20)")
    # Interpreter + numpy + expo_stream, held long enough to be sampled.
    _, baseline, _ = run_sampled([sys.executable, "-c", "import expo_stream, time; time.sleep(0.3)"])
    rc, peak, _ = run_sampled([sys.executable, "-c", code, str(tmp_path / "sft"),
                               str(tmp_path / "dpo"), str(tmp_path / "out")])
    assert rc == 0
    # Two threads x two chunks in flight x 2 MiB buffers, plus slack; holding any one whole
    # tensor (96 MiB) would exceed this.
    assert peak - baseline < 32 * 2**20, (peak, baseline)
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > n * 2
