// The kernel for the baseline instruction set, built with no -m flags: SSE2 on x86-64 (Dekker's
// product instead of a fused multiply-add), NEON on aarch64 (4 float32 / 2 float64 lanes), and
// the same generic-vector code on any other 64-bit target.
#define EXPO_VBYTES 16
#define EXPO_RUN run_baseline
#define EXPO_PLAIN plain_baseline
#include "extrapolate_simd.h"
