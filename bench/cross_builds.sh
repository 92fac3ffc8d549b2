#!/bin/sh
# The kernel built by every compiler at hand and for every target, each checked against the
# recorded digests (bench/kernel_digests.json) bit for bit wherever it can run here. Results and
# what each step printed: bench/CROSS.md.
#
#     apt-get install -y clang g++-aarch64-linux-gnu qemu-user g++-mingw-w64-x86-64 binutils file
#     sh bench/cross_builds.sh [PYTHON]      # needs the in-tree module built (pip install -e .)
#
# 1. g++, aarch64 (NEON): bench/kernel_driver.cpp with the generic level, static, under qemu.
# 2. clang++ --target=aarch64-linux-gnu: the same, compiled by clang (Debian's aarch64 cross
#    toolchain supplies headers, libraries and the linker).
# 3. clang++, x86-64: the Python extension built by setup.py with CC=clang CXX=clang++ into a
#    temporary directory (the in-tree module is untouched), bench/kernel_digests.py run against it
#    at each level this CPU runs; objdump shows each level object uses its instruction set (avx512:
#    zmm registers; avx2: ymm, no zmm; generic: neither).
# 4. g++, x86-64: the driver linked with all three levels, run at each level this CPU runs (the
#    same source and flags as the Windows build below, so a check of the driver itself).
# 5. x86_64-w64-mingw32-g++: the driver with all three levels, linked into a Windows .exe. It
#    cannot run here (no Windows, no wine): `file` shows what was built.
#
# bench/kernel_digests.py --dump writes the 1134 cases' inputs (and this machine's outputs, which
# it checks first); a driver overwrites every output with its own; --verify-dir compares those with
# the recorded digests. The flags are setup.py's (read from it, not copied). Exit status 1 on any
# difference or failed build.
set -eu
PYTHON=${1:-python}
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failed=0

show() { echo "\$ $*"; "$@"; }
# setup.py's flag lists, as words: COMMON, GCC_ONLY, avx2, avx512.
flags() {
    "$PYTHON" - "$1" <<'EOF'
import ast, sys
names = {t.id: ast.literal_eval(n.value) for n in ast.parse(open("setup.py").read()).body
         if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
         and t.id in ("COMMON", "GCC_ONLY", "MINGW", "X86_LEVELS")}
names.update({source.split("_")[-1][:-4]: f for source, f in names["X86_LEVELS"]})
print(" ".join(names[sys.argv[1]]))
EOF
}
COMMON=$(flags COMMON)
GCC_ONLY=$(flags GCC_ONLY)
AVX2=$(flags avx2)
AVX512=$(flags avx512)
compiled_by() { readelf -p .comment "$1" 2>/dev/null | grep -Eo '(GCC|clang version)[^)]*\)?' | sort -u | tr '\n' ' '; echo; }
verify() {  # verify LABEL: compare $dir/cases/*.out with the digests
    out=$("$PYTHON" bench/kernel_digests.py --verify-dir "$dir/cases") && rc=0 || rc=$?
    echo "$out" | sed "s|^$dir/cases|$1|"
    [ "$rc" -eq 0 ] || failed=1
}
# The levels this CPU runs, by the in-tree module.
CPU_LEVELS=$("$PYTHON" -c "from expo_stream import _native; print(' '.join(_native.simd_levels()))")

echo "== inputs: bench/kernel_digests.py --dump (this machine's module, baseline level)"
EXPO_STREAM_SIMD=baseline "$PYTHON" bench/kernel_digests.py --dump "$dir/cases"

echo "== 1. g++ for aarch64, under qemu-aarch64"
# shellcheck disable=SC2086
show aarch64-linux-gnu-g++ $COMMON $GCC_ONLY -static -o "$dir/driver-gcc-aarch64" \
    bench/kernel_driver.cpp csrc/extrapolate_generic.cpp
file -b "$dir/driver-gcc-aarch64" | cut -c1-80
rm -f "$dir"/cases/*.out
show qemu-aarch64 "$dir/driver-gcc-aarch64" "$dir/cases"
verify "g++ aarch64 baseline (NEON)"

echo "== 2. clang++ --target=aarch64-linux-gnu, under qemu-aarch64"
# clang finds the cross toolchain's headers and libraries (/usr/lib/gcc-cross/aarch64-linux-gnu)
# and its linker (aarch64-linux-gnu-ld) by the target triple.
# shellcheck disable=SC2086
show clang++ --target=aarch64-linux-gnu $COMMON -static -o "$dir/driver-clang-aarch64" \
    bench/kernel_driver.cpp csrc/extrapolate_generic.cpp
file -b "$dir/driver-clang-aarch64" | cut -c1-80
echo "compiled by: $(compiled_by "$dir/driver-clang-aarch64")"
rm -f "$dir"/cases/*.out
show qemu-aarch64 "$dir/driver-clang-aarch64" "$dir/cases"
verify "clang++ aarch64 baseline (NEON)"

echo "== 3. clang++ for x86-64: the Python extension, every level"
mkdir -p "$dir/lib" "$dir/tmp"
if ! CC=clang CXX=clang++ "$PYTHON" setup.py build_ext --force --build-lib "$dir/lib" \
        --build-temp "$dir/tmp" >"$dir/build.log" 2>&1 ||
        ! ls "$dir"/lib/expo_stream/_native* >/dev/null 2>&1; then
    grep -E 'error|expo-stream' "$dir/build.log" | head -20; exit 1
fi
echo "\$ CC=clang CXX=clang++ $PYTHON setup.py build_ext --force --build-lib TMP/lib --build-temp TMP/tmp"
grep -E '^(clang|expo-stream)' "$dir/build.log" | sed "s|$dir|TMP|g" | cut -c1-200
module=$(ls "$dir"/lib/expo_stream/_native*)
echo "compiled by: $(compiled_by "$module")"
# A copy of the package with the clang module in place of the in-tree one.
mkdir -p "$dir/pkg"
cp -r expo_stream "$dir/pkg/"
rm -f "$dir"/pkg/expo_stream/_native*
cp "$module" "$dir/pkg/expo_stream/"
loaded=$(cd /tmp && PYTHONPATH="$dir/pkg" "$PYTHON" -c \
    "from expo_stream import _native; print(_native.__file__)")
case $loaded in
    "$dir"/pkg/*) echo "module loaded: TMP/pkg/expo_stream/$(basename "$loaded")" ;;
    *) echo "PYTHONPATH did not win: $loaded"; exit 1 ;;
esac
for level in $CPU_LEVELS; do
    echo "\$ EXPO_STREAM_SIMD=$level PYTHONPATH=TMP/pkg $PYTHON bench/kernel_digests.py"
    EXPO_STREAM_SIMD=$level PYTHONPATH="$dir/pkg" "$PYTHON" bench/kernel_digests.py || failed=1
done
# The instructions each level object really holds.
for level in avx512 avx2 generic; do
    obj="$dir/tmp/csrc/extrapolate_$level.o"
    zmm=$(objdump -d "$obj" | grep -c '%zmm' || true)
    ymm=$(objdump -d "$obj" | grep -c '%ymm' || true)
    case $level in
        avx512) ok=$([ "$zmm" -gt 0 ] && echo yes || echo NO) ;;
        avx2) ok=$([ "$ymm" -gt 0 ] && [ "$zmm" -eq 0 ] && echo yes || echo NO) ;;
        generic) ok=$([ "$ymm" -eq 0 ] && [ "$zmm" -eq 0 ] && echo yes || echo NO) ;;
    esac
    echo "objdump -d extrapolate_$level.o: $zmm lines with zmm, $ymm with ymm: as expected: $ok"
    [ "$ok" = yes ] || failed=1
done

echo "== 4. g++ for x86-64: the driver with all three levels"
# shellcheck disable=SC2086
{
    show g++ $COMMON $GCC_ONLY -c -o "$dir/g.o" csrc/extrapolate_generic.cpp
    show g++ $COMMON $GCC_ONLY $AVX2 -c -o "$dir/a2.o" csrc/extrapolate_avx2.cpp
    show g++ $COMMON $GCC_ONLY $AVX512 -c -o "$dir/a5.o" csrc/extrapolate_avx512.cpp
    show g++ $COMMON $GCC_ONLY -o "$dir/driver-gcc-x86" bench/kernel_driver.cpp \
        "$dir/g.o" "$dir/a2.o" "$dir/a5.o"
}
for level in $CPU_LEVELS; do
    rm -f "$dir"/cases/*.out
    show "$dir/driver-gcc-x86" "$dir/cases" "$level"
    verify "g++ x86-64 driver $level"
done

echo "== 5. x86_64-w64-mingw32-g++: a Windows .exe with all three levels (not run here)"
# setup.py's MINGW flags: aligned vector moves assembled as unaligned ones (GCC bug 54412).
WIN=$(flags MINGW)
# shellcheck disable=SC2086
{
    show x86_64-w64-mingw32-g++ $COMMON $GCC_ONLY $WIN -c -o "$dir/wg.o" csrc/extrapolate_generic.cpp
    show x86_64-w64-mingw32-g++ $COMMON $GCC_ONLY $WIN $AVX2 -c -o "$dir/wa2.o" csrc/extrapolate_avx2.cpp
    show x86_64-w64-mingw32-g++ $COMMON $GCC_ONLY $WIN $AVX512 -c -o "$dir/wa5.o" \
        csrc/extrapolate_avx512.cpp
    show x86_64-w64-mingw32-g++ $COMMON $GCC_ONLY $WIN -static -o "$dir/kernel_driver.exe" \
        bench/kernel_driver.cpp "$dir/wg.o" "$dir/wa2.o" "$dir/wa5.o"
}
echo "file: $(file -b "$dir/kernel_driver.exe")"
aligned=$(x86_64-w64-mingw32-objdump -d "$dir/wa2.o" "$dir/wa5.o" |
          grep -Ec 'vmov(aps|apd|dqa|dqa32|dqa64) .*%[yz]mm' || true)
echo "aligned ymm/zmm moves in the .exe's avx2/avx512 objects: $aligned"
[ "$aligned" -eq 0 ] || failed=1

[ "$failed" -eq 0 ] && echo "all cross-builds built; every run identical to the digests"
exit "$failed"
