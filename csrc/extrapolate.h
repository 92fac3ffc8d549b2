// Declarations shared by the Python module (extrapolate.cpp) and the per-SIMD-level kernels
// (extrapolate_<level>.cpp, each compiling extrapolate_simd.h with its own instruction set).
#pragma once

#include <cstddef>
#include <cstdint>

namespace expo {

// out[i] = RN_out(dpo[i] + alpha * (dpo[i] - sft[i])) for i < n (docs/arithmetic.md). Format
// codes: 0 BF16, 1 F16, 2 F32. `out` may be the same buffer as `dpo` or `sft` when it has the
// same element size (every element's inputs are read before its output is written); any other
// overlap is the caller's to avoid.
using Kernel = void (*)(const void* dpo, int dpo_fmt, const void* sft, int sft_fmt, void* out,
                        int out_fmt, std::ptrdiff_t n, double alpha);

// Bench only, BF16 in and out: the plain, inexact float32 loop RN(d + fl32(alpha)*(d - s)) with
// float32 rounding at every step. Not the contract; an honest ceiling for the exact kernel.
using PlainKernel = void (*)(const uint16_t* dpo, const uint16_t* sft, uint16_t* out,
                             std::ptrdiff_t n, float alpha);

#if defined(__x86_64__) || defined(_M_X64)
void run_avx512(const void*, int, const void*, int, void*, int, std::ptrdiff_t, double);
void plain_avx512(const uint16_t*, const uint16_t*, uint16_t*, std::ptrdiff_t, float);
void run_avx2(const void*, int, const void*, int, void*, int, std::ptrdiff_t, double);
void plain_avx2(const uint16_t*, const uint16_t*, uint16_t*, std::ptrdiff_t, float);
#endif
void run_baseline(const void*, int, const void*, int, void*, int, std::ptrdiff_t, double);
void plain_baseline(const uint16_t*, const uint16_t*, uint16_t*, std::ptrdiff_t, float);

}  // namespace expo
