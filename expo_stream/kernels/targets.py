"""Parameters of the three float formats the kernels read and write."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str  # safetensors dtype name
    code: int  # the number the compiled kernels use for this format
    bits: int
    precision: int  # significand bits, the implicit one included
    emin: int  # exponent of the smallest normal number
    emax: int

    @property
    def overflow(self) -> float:
        """2**(emax+1): a rounded magnitude this large is inf."""
        return 2.0 ** (self.emax + 1)

    @property
    def inf_bits(self) -> int:
        return ((1 << (self.bits - self.precision)) - 1) << (self.precision - 1)

    @property
    def nan_bits(self) -> int:
        """The canonical quiet NaN (docs/arithmetic.md, C4)."""
        return self.inf_bits | (1 << (self.precision - 2))


BF16 = Target("BF16", 0, 16, 8, -126, 127)
F16 = Target("F16", 1, 16, 11, -14, 15)
F32 = Target("F32", 2, 32, 24, -126, 127)

# Keyed by NumPy dtype name (ml_dtypes names bfloat16 "bfloat16").
TARGETS = {"bfloat16": BF16, "float16": F16, "float32": F32}
BY_NAME = {t.name: t for t in TARGETS.values()}
