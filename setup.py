"""Builds the optional native kernel (csrc/) as expo_stream._native.

The package works without it (Numba or NumPy kernels take over), so a failed compile is reported
and skipped rather than failing the install.

The kernel is compiled once per SIMD level, each translation unit with its own instruction-set
flags (csrc/extrapolate_simd.h explains the layout); the module itself (csrc/extrapolate.cpp)
gets no -m flags and picks a level at import. The x86 levels are built only for x86-64.
"""

import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -ffp-contract=off: no fused multiply-add behind the kernel's back; the proofs in
# docs/arithmetic.md count every rounding, and the only fused operations are explicit.
COMMON = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
          "-Wno-psabi"]
X86 = platform.machine().lower() in ("x86_64", "amd64")
LEVELS = [("csrc/extrapolate_generic.cpp", [])]
if X86:
    LEVELS += [
        ("csrc/extrapolate_avx2.cpp", ["-mavx2", "-mfma", "-mbmi2", "-mf16c"]),
        ("csrc/extrapolate_avx512.cpp",
         ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mbmi2", "-mf16c"]),
    ]


class OptionalBuildExt(build_ext):
    def build_extension(self, ext):
        try:
            if ext.name == "expo_stream._native":
                # Each level with its own flags; the module links the objects.
                objects = []
                for source, flags in LEVELS:
                    objects += self.compiler.compile(
                        [source], output_dir=self.build_temp, include_dirs=["csrc"],
                        extra_postargs=COMMON + flags, depends=["csrc/extrapolate_simd.h",
                                                                "csrc/extrapolate.h"])
                ext.extra_objects = objects
            super().build_extension(ext)
        except Exception as exc:  # compiler missing or failing: the pure-Python path remains
            print(f"expo-stream: native kernel not built ({exc}); Numba/NumPy kernels will be used",
                  file=sys.stderr)


native = Extension(
    "expo_stream._native",
    sources=["csrc/extrapolate.cpp"],
    # The level sources too: a changed level must relink the module.
    depends=["csrc/extrapolate.h", "csrc/extrapolate_simd.h"] + [source for source, _ in LEVELS],
    language="c++",
    extra_compile_args=COMMON,
)

setup(ext_modules=[native], cmdclass={"build_ext": OptionalBuildExt})
