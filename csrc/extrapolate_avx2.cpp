// The kernel for AVX2 with FMA (x86-64-v3): 8 float32 / 4 float64 lanes per register.
// Built with -mavx2 -mfma -mbmi2 -mf16c (setup.py); called only where the CPU has them.
#define EXPO_VBYTES 32
#define EXPO_RUN run_avx2
#define EXPO_PLAIN plain_avx2
#include "extrapolate_simd.h"
