"""Builds the optional native kernel (csrc/) as expo_stream._native.

The package works without it (Numba or NumPy kernels take over), so a compiler that is missing,
unsupported or failing is reported in one line and the install goes on.

The kernel is compiled once per SIMD level, each translation unit with its own instruction-set
flags (csrc/extrapolate_simd.h explains the layout); the module itself (csrc/extrapolate.cpp)
gets no -m flags and picks a level at import. Flags follow the compiler and the target:
- GCC and clang / Apple clang (any compiler setuptools drives the Unix way, MinGW included): the
  COMMON flags, plus GCC_ONLY for GCC. On x86-64 the avx2 and avx512 levels are built with their
  -m flags; on aarch64 / arm64 only the generic level (NEON), which is all extrapolate.cpp
  dispatches to there.
- MSVC: not attempted. The kernel is written in GCC vector extensions (vector_size,
  __builtin_cpu_supports, __builtin_convertvector) that MSVC lacks.

A build is cached under build/native-cache/, keyed by the sources, this file, the compiler's
identity and the module's file name suffix, so installing again (README's second command, a
reinstall) copies the module instead of compiling it again (~90 s).
"""

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CACHE = HERE / "build" / "native-cache"

# -ffp-contract=off: no fused multiply-add behind the kernel's back (clang fuses within an
# expression by default); the proofs in docs/arithmetic.md count every rounding, and the only
# fused operations are explicit.
COMMON = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
# GCC notes that passing vectors by value changed ABI across versions; the kernel's vectors never
# cross a translation unit, so the note is noise. Clang has no such flag to pass.
GCC_ONLY = ["-Wno-psabi"]
# MinGW (GCC on 64-bit Windows) cannot align the stack beyond 16 bytes (GCC bug 54412), so an
# aligned move of a spilled ymm/zmm register could fault; the assembler (binutils >= 2.38) turns
# aligned vector moves into unaligned ones, as fast on aligned data.
MINGW = ["-Wa,-muse-unaligned-vector-move"]
GENERIC = ("csrc/extrapolate_generic.cpp", [])
X86_LEVELS = [
    ("csrc/extrapolate_avx2.cpp", ["-mavx2", "-mfma", "-mbmi2", "-mf16c"]),
    ("csrc/extrapolate_avx512.cpp",
     ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mbmi2", "-mf16c"]),
]
HEADERS = ["csrc/extrapolate.h", "csrc/extrapolate_simd.h"]
NO_NATIVE = ('expo-stream: native kernel not built ({why}); the Numba kernel (pip install '
             '"expo-stream[numba]", ~1.2-1.6 GB/s per core) or NumPy will be used')


def target_machine() -> str:
    """The machine the module is built for: 'x86_64', 'aarch64' or another platform.machine().

    macOS builds for another architecture through ARCHFLAGS (cibuildwheel's arm64 wheels on an
    Intel runner); a single -arch there wins over the running machine.
    """
    machine = platform.machine().lower()
    if sys.platform == "darwin":
        archs = re.findall(r"-arch\s+(\S+)", os.environ.get("ARCHFLAGS", ""))
        if len(set(archs)) == 1:
            machine = archs[0].lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def compiler_command(compiler) -> list[str]:
    """The command that compiles a .cpp file (setuptools >= 72: compiler_so_cxx, from CXX)."""
    command = getattr(compiler, "compiler_so_cxx", None) or compiler.compiler_so
    head = []
    for word in command:  # "ccache g++ -pthread -fPIC": up to the first option
        if word.startswith("-"):
            break
        head.append(word)
    return head


def compiler_identity(compiler) -> tuple[str, str]:
    """('gcc' | 'clang' | 'msvc' | 'unknown', the compiler's --version line or name)."""
    if compiler.compiler_type == "msvc":
        return "msvc", "msvc"
    command = compiler_command(compiler)
    try:
        text = subprocess.run(command + ["--version"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    first = text.splitlines()[0] if text else " ".join(command)
    name = Path(command[-1]).name if command else ""
    if "clang" in text.lower() or "clang" in name:  # clang, Apple clang, (Apple) LLVM
        return "clang", first
    if "Free Software Foundation" in text or re.search(r"(^|-)(g\+\+|gcc|c\+\+|cc)(-\d+)?$", name):
        return "gcc", first
    return "unknown", first


class OptionalBuildExt(build_ext):
    def build_extensions(self):
        native = [ext for ext in self.extensions if ext.name == "expo_stream._native"]
        if native and self.compiler.compiler_type == "msvc":
            # Not an error: Windows users get the Numba/NumPy kernels (README, "Install").
            print(NO_NATIVE.format(why="MSVC lacks the GCC vector extensions the kernel is "
                                       "written in"), file=sys.stderr)
            self.extensions = [ext for ext in self.extensions if ext not in native]
        super().build_extensions()

    def build_extension(self, ext):
        if ext.name != "expo_stream._native":
            return super().build_extension(ext)
        try:
            self._build_native(ext)
        except Exception as exc:  # compiler missing or failing: the pure-Python path remains
            # The compiler's own messages are above; a failed command line is too long to repeat.
            why = f"{type(exc).__name__}: {exc}"
            print(NO_NATIVE.format(why=why if len(why) < 160 else why[:160] + "..."),
                  file=sys.stderr)
            self.extensions = [e for e in self.extensions if e is not ext]

    def _build_native(self, ext):
        kind, version = compiler_identity(self.compiler)
        machine = target_machine()
        common = COMMON + (GCC_ONLY if kind == "gcc" else [])
        if self.compiler.compiler_type == "mingw32" and kind == "gcc":
            common += MINGW
        levels = [GENERIC] + (X86_LEVELS if machine == "x86_64" else [])
        ext.extra_compile_args = common

        target = Path(self.get_ext_fullpath(ext.name))
        key = self._cache_key(kind, version, machine, target.name, common, levels)
        cached = CACHE / key / target.name
        if cached.exists() and not self.force:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, target)
            print(f"expo-stream: native kernel reused from {cached.relative_to(HERE)} "
                  f"(same sources, flags and compiler: {version})", file=sys.stderr)
            return

        print(f"expo-stream: compiling the native kernel ({version}; levels: "
              f"{', '.join(Path(s).stem.split('_')[1] for s, _ in levels)}), about a minute...",
              file=sys.stderr)
        # The levels are independent translation units: compile them side by side.
        def compile_level(level):
            source, flags = level
            return self.compiler.compile([source], output_dir=self.build_temp,
                                         include_dirs=["csrc"], extra_postargs=common + flags,
                                         depends=HEADERS)
        with ThreadPoolExecutor(len(levels)) as pool:
            ext.extra_objects = [obj for objs in pool.map(compile_level, levels) for obj in objs]
        super().build_extension(ext)

        try:  # a cache that cannot be written (read-only tree) only costs the next build time
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(cached.name + ".partial")
            shutil.copyfile(target, partial)
            os.replace(partial, cached)
        except OSError:
            pass

    def _cache_key(self, kind, version, machine, filename, common, levels) -> str:
        digest = hashlib.sha256()
        for part in (kind, version, " ".join(compiler_command(self.compiler)), machine, filename,
                     sys.platform, repr(common), repr(levels),
                     os.environ.get("CFLAGS", ""), os.environ.get("CXXFLAGS", ""),
                     os.environ.get("CPPFLAGS", ""), os.environ.get("LDFLAGS", ""),
                     os.environ.get("ARCHFLAGS", "")):
            digest.update(part.encode() + b"\0")
        for path in sorted((HERE / "csrc").iterdir()) + [HERE / "setup.py"]:
            if path.suffix in (".cpp", ".h", ".py"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:24]


native = Extension(
    "expo_stream._native",
    sources=["csrc/extrapolate.cpp"],
    # The level sources too: a changed level must relink the module.
    depends=HEADERS + [GENERIC[0]] + [source for source, _ in X86_LEVELS],
    language="c++",
    optional=True,  # a failed build leaves the Python kernels, never a failed install
)

setup(ext_modules=[native], cmdclass={"build_ext": OptionalBuildExt})
