"""Builds the optional native kernel (csrc/) as expo_stream._native.

The package works without it (Numba or NumPy kernels take over), so a failed compile is reported
and skipped rather than failing the install.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler missing or failing: the pure-Python path remains
            print(f"expo-stream: native kernel not built ({exc}); Numba/NumPy kernels will be used",
                  file=sys.stderr)


native = Extension(
    "expo_stream._native",
    sources=["csrc/extrapolate.cpp"],
    language="c++",
    # -ffp-contract=off: no fused multiply-add behind the kernel's back (docs/arithmetic.md).
    extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"],
)

setup(ext_modules=[native], cmdclass={"build_ext": OptionalBuildExt})
