// The kernel for AVX-512 (F, BW, DQ, VL) with FMA: 16 float32 / 8 float64 lanes per register.
// Built with those -m flags only (setup.py); called only where the CPU has them (extrapolate.cpp).
#define EXPO_VBYTES 64
#define EXPO_RUN run_avx512
#define EXPO_PLAIN plain_avx512
#include "extrapolate_simd.h"
