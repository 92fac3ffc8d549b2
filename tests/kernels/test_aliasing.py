"""``extrapolate`` with ``out`` aliasing or overlapping an input, and non-native byte order.

The native kernel reads an element's inputs again after writing earlier outputs (its second
stage), so in-place use was silently wrong there; every backend must give the bits of a
separate output (docs/arithmetic.md, C7)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from expo_stream.kernels import extrapolate

from .backends import AVAILABLE

BF16 = np.dtype(ml_dtypes.bfloat16)
BACKEND = AVAILABLE  # test_extrapolate.py requires every backend to load in CI


def checkpoint_like(n: int, dtype, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """DPO = SFT plus a few ulps: most results land next to a rounding midpoint at α = 0.3."""
    rng = np.random.default_rng(seed)
    sft = (rng.standard_normal(n) * 0.02).astype(dtype)
    raw = sft.view(np.uint16 if dtype.itemsize == 2 else np.uint32).copy()
    raw += rng.integers(-3, 4, n).astype(raw.dtype)
    return raw.view(dtype), sft


@pytest.mark.parametrize("backend", BACKEND)
@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float16), np.dtype(np.float32)])
@pytest.mark.parametrize("alias", ["dpo", "sft"])
def test_out_may_be_an_input(backend, dtype, alias):
    dpo, sft = checkpoint_like(5000, dtype)
    want = extrapolate(dpo, sft, 0.3, backend=backend)
    d, s = dpo.copy(), sft.copy()
    target = d if alias == "dpo" else s
    got = extrapolate(d, s, 0.3, out=target, backend=backend)
    assert got is target
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("backend", BACKEND)
@pytest.mark.parametrize("shift", [-5, -1, 1, 7, 1000])
def test_out_may_overlap_an_input_at_an_offset(backend, shift):
    dpo, sft = checkpoint_like(4000, BF16, seed=1)
    n = 3000
    buffer = np.zeros(4000 + abs(shift) + 16, BF16)
    at = abs(shift) + 8
    buffer[at:at + n] = dpo[:n]
    d = buffer[at:at + n]
    out = buffer[at + shift:at + shift + n]
    want = extrapolate(d.copy(), sft[:n], 0.3, backend=backend)
    extrapolate(d, sft[:n], 0.3, out=out, backend=backend)
    assert np.array_equal(out.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("backend", BACKEND)
def test_out_may_be_a_strided_view_of_an_input(backend):
    dpo, sft = checkpoint_like(2000, np.dtype(np.float32), seed=2)
    d = dpo.copy()
    want = extrapolate(d[::2], sft[::2], 2.5, backend=backend)
    extrapolate(d[::2], sft[::2], 2.5, out=d[::2], backend=backend)
    assert np.array_equal(d[::2].view(np.uint32), want.view(np.uint32))
    assert np.array_equal(d[1::2].view(np.uint32), dpo[1::2].view(np.uint32))  # untouched


@pytest.mark.parametrize("which", ["dpo", "sft", "out"])
def test_non_native_byte_order_is_refused(which):
    dpo, sft = checkpoint_like(16, np.dtype(np.float32))
    arrays = {"dpo": dpo, "sft": sft, "out": np.empty(16, np.float32)}
    arrays[which] = arrays[which].astype(">f4")
    assert arrays[which].dtype.name == "float32"  # the name alone does not tell
    with pytest.raises(TypeError, match=f"{which} has non-native byte order"):
        extrapolate(arrays["dpo"], arrays["sft"], 0.3, out=arrays["out"])
