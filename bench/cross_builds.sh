#!/bin/sh
# The kernel's aarch64 build (NEON, 4 float32 / 2 float64 lanes) against the recorded digests,
# bit for bit: cross-compiled with Debian's g++-aarch64-linux-gnu, run under qemu-aarch64.
#
#     apt-get install -y g++-aarch64-linux-gnu qemu-user
#     sh bench/aarch64_crosscheck.sh [PYTHON]
#
# bench/kernel_digests.py --dump writes the 1134 cases' inputs (and this machine's outputs, which
# it checks first); bench/kernel_driver.cpp, built for aarch64, overwrites every output with its
# own; --verify-dir compares those with bench/kernel_digests.json. Exit status 1 on any difference.
set -eu
PYTHON=${1:-python}
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
EXPO_STREAM_SIMD=baseline "$PYTHON" bench/kernel_digests.py --dump "$dir"
aarch64-linux-gnu-g++ -O3 -std=c++17 -ffp-contract=off -fno-math-errno -fno-trapping-math \
    -Wno-psabi -static -o "$dir/kernel_driver" bench/kernel_driver.cpp
file "$dir/kernel_driver" | sed 's/^[^:]*: //' | cut -c1-60
rm -f "$dir"/*.out
qemu-aarch64 "$dir/kernel_driver" "$dir"
"$PYTHON" bench/kernel_digests.py --verify-dir "$dir"
