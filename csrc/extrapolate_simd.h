// Kernel body, compiled once per SIMD level: extrapolate_avx512.cpp, extrapolate_avx2.cpp and
// extrapolate_generic.cpp each define EXPO_VBYTES (the register width in bytes: 64, 32, 16),
// EXPO_RUN and EXPO_PLAIN (the names of the two entry points) and include this file under
// their own compiler flags. Everything else here has internal linkage, so no helper compiled
// for one instruction set can be picked by the linker for another.
//
// The arithmetic and its proofs are in docs/arithmetic.md ("How it is computed"). Three stages:
//   1. BF16/F16 inputs with a BF16/F16 output: a float32 stage (4, 8 or 16 lanes) that decides
//      the rounding wherever an error bound (or exactness) proves it; F32 formats: the float64
//      fast path of stage 2 instead.
//   2. The lanes left undecided, gathered per block: the float64 fast path and the float64
//      second stage (TwoSum / TwoProduct).
//   3. What remains of those: the exact expansion path.
// Every decision is exact, so the level, the lane count and the order cannot change a bit. The
// files are built with -ffp-contract=off: the only fused multiply-adds are the explicit ones.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "extrapolate.h"

#if !defined(EXPO_VBYTES) || !defined(EXPO_RUN) || !defined(EXPO_PLAIN)
#error "define EXPO_VBYTES, EXPO_RUN and EXPO_PLAIN before including extrapolate_simd.h"
#endif

#if EXPO_VBYTES >= 32 || defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace expo {
namespace {

using std::ptrdiff_t;

enum Format : int { BF16 = 0, F16 = 1, F32 = 2 };

struct Params {
  int width, precision, emin, emax;
};
constexpr Params kParams[3] = {{16, 8, -126, 127}, {16, 11, -14, 15}, {32, 24, -126, 127}};

template <int F>
struct Storage {
  using type = uint16_t;
};
template <>
struct Storage<F32> {
  using type = uint32_t;
};
template <int F>
constexpr uint64_t kStorageMask = F == F32 ? 0xffffffffu : 0xffffu;

#define EXPO_INLINE inline __attribute__((always_inline))

// Vectors one register wide: L64 lanes of binary64 / 64-bit integers, L32 of binary32 / 32-bit
// integers. Comparisons give lane masks (0 or -1), `mask ? a : b` selects lane by lane, and a
// cast between vector types of the same size reinterprets the bits.
constexpr int L64 = EXPO_VBYTES / 8;
constexpr int L32 = EXPO_VBYTES / 4;
typedef double vd __attribute__((vector_size(EXPO_VBYTES)));
typedef int64_t vi __attribute__((vector_size(EXPO_VBYTES)));
typedef uint64_t vu __attribute__((vector_size(EXPO_VBYTES)));
typedef float vf __attribute__((vector_size(EXPO_VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(EXPO_VBYTES)));
typedef uint32_t vu32 __attribute__((vector_size(EXPO_VBYTES)));

EXPO_INLINE vd splat(double x) { return vd{} + x; }
EXPO_INLINE vu splat_u(uint64_t x) { return vu{} + x; }
EXPO_INLINE vf splat_f(float x) { return vf{} + x; }

// ---- the per-level primitives: a*b - c with one rounding (exact where used), and "all lanes" --

#if EXPO_VBYTES == 64
constexpr bool kFused = true;
EXPO_INLINE vf fms32(vf a, vf b, vf c) {
  return (vf)_mm512_fmsub_ps((__m512)a, (__m512)b, (__m512)c);
}
EXPO_INLINE vf fma32(vf a, vf b, vf c) {
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
EXPO_INLINE vd fms64(vd a, vd b, vd c) {
  return (vd)_mm512_fmsub_pd((__m512d)a, (__m512d)b, (__m512d)c);
}
// Bit i set where lane i of `decided` is 0. A test, not a sign-bit gather of ~decided: GCC
// then keeps one instruction fewer between stage 1's compare mask and this one.
EXPO_INLINE unsigned undecided_bits(vi32 decided) {
  return _mm512_testn_epi32_mask((__m512i)decided, (__m512i)decided);
}
// The lanes of v whose bit is set in `bits`, stored contiguously at dst (which has room for a
// whole register). Compress into a register, then store: a compressing store to memory is slow
// on some CPUs.
EXPO_INLINE void compress_store(uint32_t* dst, vu32 v, unsigned bits) {
  _mm512_storeu_si512(dst, _mm512_maskz_compress_epi32(static_cast<__mmask16>(bits), (__m512i)v));
}
#elif EXPO_VBYTES == 32
constexpr bool kFused = true;
EXPO_INLINE vf fms32(vf a, vf b, vf c) {
  return (vf)_mm256_fmsub_ps((__m256)a, (__m256)b, (__m256)c);
}
EXPO_INLINE vf fma32(vf a, vf b, vf c) {
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
EXPO_INLINE vd fms64(vd a, vd b, vd c) {
  return (vd)_mm256_fmsub_pd((__m256d)a, (__m256d)b, (__m256d)c);
}
EXPO_INLINE unsigned undecided_bits(vi32 decided) {
  return _mm256_movemask_ps((__m256)~decided);
}
// AVX2 has no compress: a table of the 256 permutations that move the selected lanes first,
// eight 3-bit lane numbers packed in each entry.
struct CompressTable {
  uint32_t perm[256];
  constexpr CompressTable() : perm() {
    for (unsigned bits = 0; bits < 256; ++bits) {
      uint32_t packed = 0;
      int at = 0;
      for (unsigned lane = 0; lane < 8; ++lane) {
        if (bits & (1u << lane)) packed |= lane << (3 * at++);
      }
      perm[bits] = packed;
    }
  }
};
constexpr CompressTable kCompress{};
EXPO_INLINE void compress_store(uint32_t* dst, vu32 v, unsigned bits) {
  const __m256i shifts = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
  __m256i perm = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kCompress.perm[bits])),
                                   shifts);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                      _mm256_permutevar8x32_epi32((__m256i)v, perm));
}
#elif defined(__aarch64__)
constexpr bool kFused = true;
EXPO_INLINE vf fms32(vf a, vf b, vf c) {
  // vfmsq_f32(c, a, b) = c - a*b, fused; its negation is exact.
  return (vf)vnegq_f32(vfmsq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b));
}
EXPO_INLINE vf fma32(vf a, vf b, vf c) {
  return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
}
EXPO_INLINE vd fms64(vd a, vd b, vd c) {
  return (vd)vnegq_f64(vfmsq_f64((float64x2_t)c, (float64x2_t)a, (float64x2_t)b));
}

#else
// No fused multiply-add in the baseline instruction set: Dekker's product, exact under the
// conditions the float32 stage checks for it (no overflow, |a*b| >= 2^-80). Only used as
// a*b - fl(a*b). fma32 is never called here (kFused is false).
constexpr bool kFused = false;
EXPO_INLINE vf fma32(vf a, vf b, vf c) { return a * b + c; }
EXPO_INLINE vd fms64(vd a, vd b, vd p);  // not used: two_product_fast falls back to Dekker
EXPO_INLINE vf fms32(vf a, vf b, vf p) {
  const float kSplit = 4097.0f;  // 2^12 + 1
  vf c = kSplit * a;
  vf ah = c - (c - a), al = a - ah;
  c = kSplit * b;
  vf bh = c - (c - b), bl = b - bh;
  return ((ah * bh - p) + ah * bl + al * bh) + al * bl;
}
#endif

#if EXPO_VBYTES == 16
EXPO_INLINE unsigned undecided_bits(vi32 decided) {
#if defined(__SSE2__)
  return _mm_movemask_ps((__m128)~decided);
#else
  unsigned bits = 0;
  for (int i = 0; i < L32; ++i) bits |= unsigned(decided[i] == 0) << i;
  return bits;
#endif
}
EXPO_INLINE void compress_store(uint32_t* dst, vu32 v, unsigned bits) {
  int at = 0;
  for (int lane = 0; lane < L32; ++lane) {
    dst[at] = v[lane];
    at += (bits >> lane) & 1;
  }
}
#endif

// Every lane of the mask m set. One sign-bit gather where the level has it: GCC lowers the
// portable loop to a lane-by-lane extraction (some 20 instructions on AVX-512).
EXPO_INLINE bool all64(vi m) {
#if EXPO_VBYTES == 64
  return _mm512_movepi64_mask((__m512i)m) == 0xff;
#elif EXPO_VBYTES == 32
  return _mm256_movemask_pd((__m256d)m) == 0xf;
#elif defined(__SSE2__)
  return _mm_movemask_pd((__m128d)m) == 0x3;
#else
  int64_t acc = -1;
  for (int i = 0; i < L64; ++i) acc &= m[i];
  return acc != 0;
#endif
}

// ---- decoding stored bits to exact doubles --------------------------------------------------

// 2^e for -1022 <= e <= 1023, exactly: every doubling and halving is exact. A loop because
// clang (14 at least) cannot evaluate __builtin_ldexp in a constant expression.
constexpr double pow2(int e) {
  double r = 1.0;
  for (int i = 0; i < e; ++i) r *= 2.0;
  for (int i = 0; i > e; --i) r *= 0.5;
  return r;
}

// The exact value of stored bits as doubles, with integer operations only. Exponent and
// mantissa are moved into the double's fields unchanged and rebiased by one exact multiplication
// by 2^(1023 - bias), which also normalises subnormal inputs; inf/NaN get the all-ones exponent.
template <int F>
EXPO_INLINE vd decode(vu bits) {
  constexpr Params P = kParams[F];
  constexpr int kShift = 52 - (P.precision - 1);
  constexpr uint64_t kSign = uint64_t{1} << (P.width - 1);
  constexpr uint64_t kExp = ((uint64_t{1} << (P.width - P.precision)) - 1) << (P.precision - 1);
  constexpr double kRebias = pow2(1023 - (1 - P.emin));
  vu body = (bits & ~kSign) << kShift;
  vd finite = (vd)body * kRebias;
  vd special = (vd)(body | (uint64_t{0x7ff} << 52));
  vi is_special = (vi)((bits & kExp) == kExp);
  vu v = is_special ? (vu)special : (vu)finite;
  return (vd)(v | ((bits & kSign) << (64 - P.width)));
}

// ---- binary64 error-free transformations ----------------------------------------------------

EXPO_INLINE void two_sum(vd a, vd b, vd& s, vd& e) {
  s = a + b;
  vd bb = s - a;
  e = (a - (s - bb)) + (b - bb);
}

EXPO_INLINE void two_product(vd a, vd b, vd& p, vd& e) {
  // Dekker's algorithm; identical to an FMA-based TwoProduct since both are exact.
  constexpr double kSplitter = 134217729.0;  // 2^27 + 1
  p = a * b;
  vd c = kSplitter * a;
  vd ah = c - (c - a), al = a - ah;
  c = kSplitter * b;
  vd bh = c - (c - b), bl = b - bh;
  e = ((ah * bh - p) + ah * bl + al * bh) + al * bl;
}

// The same exact pair with one fused multiply-add where the level has it (the error a*b - p is
// exact whenever it is representable, which near_lanes checks before it trusts it).
EXPO_INLINE void two_product_fast(vd a, vd b, vd& p, vd& e) {
  if constexpr (kFused) {
    p = a * b;
    e = fms64(a, b, p);
  } else {
    two_product(a, b, p, e);
  }
}

// ---- the output grid, from a binary64 magnitude ----------------------------------------------

// Where a non-negative double `mag` (0 or normal) falls on the output format's grid: its
// unbiased exponent `e`, the cell's lower edge `low` as a count `steps` of the quantum 2^k, and
// the cell's midpoint `mid`.
template <int OUT>
struct Cell {
  vi e;
  vu steps;
  vd mid;

  EXPO_INLINE explicit Cell(vd mag) {
    constexpr Params P = kParams[OUT];
    vu abits = (vu)mag;
    e = (vi)(abits >> 52) - 1023;
    vu mant = (abits & ((uint64_t{1} << 52) - 1)) | (uint64_t{1} << 52);
    vi below_min = P.emin - e;
    vi drop = 52 - (P.precision - 1) + (below_min > 0 ? below_min : vi{});
    drop = drop > 63 ? vi{} + 63 : drop;
    vi k = e - 52 + drop;
    steps = mant >> (vu)drop;
    vd low = (vd)(abits & ~((splat_u(1) << (vu)drop) - 1));
    low = drop > 52 ? splat(0.0) : low;  // the whole significand dropped: the cell starts at 0
    mid = low + (vd)((vu)(k - 1 + 1023) << 52);
  }

  // Output bits for `steps` (already rounded) and a sign mask.
  EXPO_INLINE vu encode(vi negative) const {
    constexpr Params P = kParams[OUT];
    constexpr uint64_t kSign = uint64_t{1} << (P.width - 1);
    constexpr uint64_t kInf = ((uint64_t{1} << (P.width - P.precision)) - 1) << (P.precision - 1);
    vi exp_field = e - P.emin;
    exp_field = exp_field < 0 ? vi{} : exp_field;
    exp_field = exp_field > 2 * P.emax ? vi{} + 2 * P.emax : exp_field;  // larger is inf anyway
    vu bits = ((vu)exp_field << (P.precision - 1)) + steps;
    vi overflow = ((vi)bits > int64_t{kInf}) | (e > P.emax);  // signed compares: AVX2 has them
    bits = overflow ? splat_u(kInf) : bits;
    return bits | ((vu)negative & kSign);
  }

  // The magnitudes the cell is computed for: non-zero finite.
  static EXPO_INLINE vi covers(vd mag) { return (mag != 0.0) & (mag - mag == 0.0); }
};

// The same for magnitudes in OUT's normal range only, where the quantum is a fixed number of
// binary64 bits: the cell's ends and midpoint are bit masks of |x|'s binary64 bits, and the
// output bits its upper bits rebiased (a carry from rounding up moves to the next binade, or from
// the largest finite value to inf, as rounding does). A few operations instead of Cell's
// variable shifts. Used for BF16 output only: F16's subnormal range holds common weights.
template <int OUT>
struct NormalCell {
  static constexpr Params P = kParams[OUT];
  static constexpr int kDrop = 52 - (P.precision - 1);
  vu steps;
  vd mid;

  EXPO_INLINE explicit NormalCell(vd mag) {
    vu abits = (vu)mag;
    steps = (abits >> kDrop) - (uint64_t(1023 - P.emax) << (P.precision - 1));
    mid = (vd)((abits & ~((uint64_t{1} << kDrop) - 1)) | (uint64_t{1} << (kDrop - 1)));
  }

  EXPO_INLINE vu encode(vi negative) const {
    return steps | ((vu)negative & (uint64_t{1} << (P.width - 1)));
  }

  // From OUT's smallest normal value up to, excluding, the binade above its largest.
  static EXPO_INLINE vi covers(vd mag) {
    return (mag >= pow2(P.emin)) & (mag < pow2(P.emax + 1));
  }
};

EXPO_INLINE vd abs(vd x) { return (vd)((vu)x & ~(uint64_t{1} << 63)); }

// ---- stage 3: the exact path (docs/arithmetic.md, steps 1-6) ----------------------------------

template <int OUT>
EXPO_INLINE vu exact_lanes(vd d_in, vd s_in, vd alpha) {
  constexpr Params P = kParams[OUT];
  constexpr uint64_t kSign = uint64_t{1} << (P.width - 1);
  constexpr uint64_t kInf = ((uint64_t{1} << (P.width - P.precision)) - 1) << (P.precision - 1);
  constexpr uint64_t kNaN = kInf | (uint64_t{1} << (P.precision - 2));
  const vd zero = splat(0.0);

  // Non-finite inputs take the IEEE binary64 value (C4); the exact path runs on zeros instead.
  vd ieee = d_in + alpha * (d_in - s_in);
  vi finite = (d_in - d_in == 0.0) & (s_in - s_in == 0.0);
  vd d = finite ? d_in : zero;
  vd s = finite ? s_in : zero;

  vd dh, dl, ph, pl, qh, ql;
  two_sum(d, -s, dh, dl);
  two_product(alpha, dh, ph, pl);
  two_product(alpha, dl, qh, ql);

  // Grow-Expansion of ql, qh, pl, ph, d into e0..e4, smallest first.
  vd e0, e1, e2, e3, e4, q;
  two_sum(qh, ql, e1, e0);
  two_sum(pl, e0, q, e0);
  two_sum(q, e1, e2, e1);
  two_sum(ph, e0, q, e0);
  two_sum(q, e1, q, e1);
  two_sum(q, e2, e3, e2);
  two_sum(d, e0, q, e0);
  two_sum(q, e1, q, e1);
  two_sum(q, e2, q, e2);
  two_sum(q, e3, e4, e3);
  vd approx = (((e0 + e1) + e2) + e3) + e4;

  vi negative = approx < 0.0;
  Cell<OUT> cell(abs(approx));

  // Exact sign of |x| - mid: grow the expansion with -side*mid, read its largest non-zero part.
  vd side = negative ? splat(-1.0) : splat(1.0);
  vd f0, f1, f2, f3, f4, f5;
  two_sum(-side * cell.mid, e0, q, f0);
  two_sum(q, e1, q, f1);
  two_sum(q, e2, q, f2);
  two_sum(q, e3, q, f3);
  two_sum(q, e4, f5, f4);
  vd top = zero;
  top = f0 != 0.0 ? f0 : top;
  top = f1 != 0.0 ? f1 : top;
  top = f2 != 0.0 ? f2 : top;
  top = f3 != 0.0 ? f3 : top;
  top = f4 != 0.0 ? f4 : top;
  top = f5 != 0.0 ? f5 : top;
  vd above = side * top;
  vi up = (above > 0.0) | ((above == 0.0) & (vi)((cell.steps & 1) != 0));
  cell.steps += (vu)(up & 1);
  vu bits = cell.encode(negative);

  // C5: an exact zero keeps IEEE's sign only when d itself is a zero.
  vi negative_zero = (d == 0.0) & (ieee == 0.0) & ((vi)ieee < 0);  // sign bit set, as a mask
  vu zero_bits = (vu)negative_zero & kSign;
  bits = approx == 0.0 ? zero_bits : bits;

  vu special = (ieee != ieee) ? splat_u(kNaN) : (splat_u(kInf) | ((vu)(ieee < 0.0) & kSign));
  return finite ? bits : special;
}

// ---- stage 2: binary64 fast path and second stage ---------------------------------------------

// Fast path, exact by an error bound: r = fl(d + fl(a * fl(d - s))) differs from the exact x by
// at most u(1.001|r| + 2.01|p|) with p = fl(a * fl(d - s)) and u = 2^-53. Wherever r is
// farther than twice that from the output midpoint of its cell, x rounds as r does.
// With a "short" alpha (at most 29 significant bits: 0.5, 2.5, 5, 25, ...) many results sit
// exactly on a midpoint, so a second test proves r exact instead: d - s exact (TwoSum error 0)
// with at most 24 significant bits, hence a * (d - s) exact, and d + p exact (TwoSum error 0).
// Then r is x itself and ties go to even from r alone. Lanes decided neither way (values next
// to a midpoint, zeros, inf and NaN) are left to the later stages.
template <int OUT>
EXPO_INLINE vu fast_lanes(vd d_in, vd s_in, vd alpha, bool short_alpha, vi& easy) {
  vd delta = d_in - s_in;
  vd p = alpha * delta;
  vd r = d_in + p;
  vd mag = abs(r);
  Cell<OUT> cell(mag);
  vd bound = 0x1p-52 * (mag + 3.0 * abs(p));
  vi decided = abs(mag - cell.mid) > bound;
  if (short_alpha) {
    vd b1 = delta - d_in;
    vd err_delta = (d_in - (delta - b1)) + (-s_in - b1);
    vd b2 = r - d_in;
    vd err_sum = (d_in - (r - b2)) + (p - b2);
    decided |= (err_delta == 0.0) & (((vu)delta & ((uint64_t{1} << 29) - 1)) == 0) &
               (err_sum == 0.0);
  }
  easy = decided & (mag != 0.0) & (mag - mag == 0.0);
  vi up = (mag > cell.mid) | ((mag == cell.mid) & (vi)((cell.steps & 1) != 0));
  cell.steps += (vu)(up & 1);
  return cell.encode(r < 0.0);
}

// Second stage. Where d - s is exact (TwoSum error 0) and the product is far from underflow and
// overflow, x = r + e_r + e_p exactly, with e_p = α(d - s) - p (TwoProduct) and e_r = (d + p) - r
// (TwoSum). Where |e_r + e_p| < 2^-40|r| (not so after a cancellation in d + p, where x may lie
// several cells away from r), x has r's sign σ, rounds to one of the two ends of r's cell (its
// quantum is at least 2^-25|r|), and |x| - m = (|r| - m) + σ(e_r + e_p). Each of the three
// binary64 operations that evaluate it as y rounds once, so |y - (|x| - m)| <=
// 2^-53(2 + 2^-52)(|m0| + |c|) with m0 = fl(|r| - m) and c = fl(σ(e_r + e_p)); wherever |y|
// exceeds 2^-50(|m0| + |c|), x rounds up exactly when y > 0. Ties (y = 0 within the bound),
// zeros, inf and NaN stay undecided for the exact path.
// C is Cell<OUT>, or NormalCell<OUT> where the lanes outside OUT's normal range may be left
// undecided.
template <int OUT, class C = Cell<OUT>>
EXPO_INLINE vu near_lanes(vd d_in, vd s_in, vd alpha, vi& decided) {
  vd delta, err_delta, p, e_p, r, e_r;
  two_sum(d_in, -s_in, delta, err_delta);
  two_product_fast(alpha, delta, p, e_p);
  two_sum(d_in, p, r, e_r);
  vd mag = abs(r);
  C cell(mag);
  vd sum = e_r + e_p;
  vd c = r < 0.0 ? -sum : sum;
  vd m0 = mag - cell.mid;
  vd y = m0 + c;
  vd bound = 0x1p-50 * (abs(m0) + abs(c));
  // The product error is exact when no partial product underflows or overflows.
  vi product_exact = ((abs(p) > 0x1p-900) | (delta == 0.0)) & (abs(delta) < 0x1p900) &
                     (abs(alpha) < 0x1p900);
  decided = (err_delta == 0.0) & product_exact & (abs(sum) < 0x1p-40 * mag) & (abs(y) > bound) &
            C::covers(mag);
  cell.steps += (vu)((y > 0.0) & 1);
  return cell.encode(r < 0.0);
}

// ---- stage 1: float32, for BF16/F16 inputs and a BF16/F16 output -------------------------------

// A float32 at least x (x >= 0, a binary64).
EXPO_INLINE float round_up32(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) f = __builtin_nextafterf(f, __builtin_inff());
  return f;
}

// Scalars of stage 1, from α once per call: α = a32 + alo exactly (alo a binary64). `bound`
// multiplies |δ| in stage 1's error bound: where α is a float32 (alo = 0), δ must be exact and
// the bound is 0; otherwise δ may carry its rounding error e_δ, |e_δ| <= 2^-24|δ|, and
// bound >= |alo| + |α|2^-24 covers both alo·δ and α·e_δ (the factor 1 + 2^-40 covers the two
// binary64 roundings of the sum).
struct Alpha32 {
  float a32, bound;
  bool exact;  // alo == 0: α is a float32
};

EXPO_INLINE Alpha32 split_alpha(double alpha) {
  Alpha32 a;
  a.a32 = static_cast<float>(alpha);
  double lo = alpha - static_cast<double>(a.a32);  // exact: α has 53 bits, a32 its top 24
  a.exact = lo == 0.0;
  double mag = lo < 0 ? -lo : lo;
  double scaled = (alpha < 0 ? -alpha : alpha) * 0x1p-24;
  a.bound = a.exact ? 0.0f : round_up32((mag + scaled) * (1.0 + 0x1p-40));
  return a;
}

EXPO_INLINE vf abs32(vf x) { return (vf)((vu32)x & 0x7fffffffu); }

// Exact float32 values of BF16/F16 bits (zero-extended into 32-bit lanes). BF16 is float32's
// upper half. F16: the fields moved into place and rebiased by an exact multiplication by
// 2^112 (subnormals included); inf/NaN become a NaN, so every later test fails and the lane
// goes on to the exact path.
// U and V: 32-bit integer and float32 vectors of one size (a register, or half of one for stage
// 2's binary64 lanes).
template <int F, class U = vu32, class V = vf>
EXPO_INLINE V decode32(U bits) {
  static_assert(F != F32, "float32 stage takes 16-bit inputs");
  typedef int32_t I __attribute__((vector_size(sizeof(U))));
  if (F == BF16) return (V)(bits << 16);
  U body = (bits & 0x7fffu) << 13;
  V finite = (V)body * 0x1p112f;
  I special = (I)((bits & 0x7c00u) == 0x7c00u);
  U v = special ? U{} + 0x7fc00000u : (U)finite;
  return (V)(v | ((bits & 0x8000u) << 16));
}

// Round-to-nearest-even of float32 values to the output format OUT, as its bits in 32-bit lanes
// (sign included). Correct for every finite input, overflow to inf included; NaN is not handled
// (stage 1 never keeps a NaN lane). BF16: float32's upper half, rounded by the integer carry
// trick. F16: rebias and round with the same trick for normal results; subnormal results by
// one float32 addition of 2^-1 (the addition rounds at F16's subnormal quantum, to nearest even);
// 65520 and above is inf.
template <int OUT>
EXPO_INLINE vu32 round_out(vf x) {
  static_assert(OUT != F32, "float32 stage rounds to 16-bit outputs");
  vu32 u = (vu32)x;
  if (OUT == BF16) return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  vu32 sign = (u >> 16) & 0x8000u;
  vu32 a = u & 0x7fffffffu;
  vu32 normal = (a + (uint32_t(15 - 127) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  vu32 sub = (vu32)((vf)a + 0.5f) - (vu32{} + 0x3f000000u);
  vu32 bits = (vi32)a < 0x38800000 ? sub : normal;   // below 2^-14: subnormal or zero
  bits = (vi32)a >= 0x477ff000 ? vu32{} + 0x7c00u : bits;  // 65520 and above: inf
  return bits | sign;
}

// x = d + α(d - s) rounded to the output format OUT (BF16 or F16), decided in float32 where a
// bound proves it (docs/arithmetic.md, "Stage 1"): with δ = fl(d - s) = d - s - e_δ,
// p = fl(a32 δ) and e_p = a32 δ - p (one fused multiply-add, exact), r = fl(d + p) and
// e_r = d + p - r (TwoSum, exact), the exact value is x = r + t with
// t = e_r + e_p + alo δ + α e_δ, and |t| <= T = fl(fl(fl(|e_r| + |e_p|) + fl(B|δ|)) (1 + 2^-18))
// + 2^-126, B the bound of Alpha32. Where α is a float32, B = 0 and δ must be exact (TwoSum
// error 0): the exact ties below need it. Where T <= 2^-14|r|:
// BF16 output: where |r - m| > T, m the midpoint of r's BF16 cell (r's bits with the low half
// replaced by 0x8000; r - m is exact), x lies on r's side of m, within a quarter quantum of r's
// cell, and rounds as r does: the answer is RN(r). F16 output: the interval [r - T, r + T] lies
// inside [fl(r - U), fl(r + U)] with U = fl(T + 2^-22|r|); where both ends of that round to the
// same bits, so does x (rounding is monotonic), and those bits are RN(fl(r - U)). Where α is a
// float32, e_p = e_r = 0 and |p| >= 2^-101, x = r: the answer is RN(r), ties included.
// Everything else is left undecided: zeros, |r| < 2^-112, inf, NaN, an overflow, an inexact δ,
// results next to a midpoint.
// kAlphaExact: α is a float32 (alo = 0, B = 0), a property of the call; compiled both ways so
// that neither pays for the other's terms.
template <int OUT, bool kAlphaExact>
EXPO_INLINE vu32 stage1_lanes(vf d, vf s, vf a32, vf bound_delta, vi32& decided) {
  vf delta = d - s;
  vi32 usable = ~vi32{};
  if constexpr (kAlphaExact) {
    vf b1 = delta - d;
    vf e_delta = (d - (delta - b1)) - (s + b1);  // fl(-s - b1) = -fl(s + b1): TwoSum's error
    usable = e_delta == 0.0f;
  }
  vf p = a32 * delta;
  vf e_p = fms32(a32, delta, p);
  vf r = d + p;
  vf b2 = r - d;
  vf e_r = (d - (r - b2)) + (p - b2);
  vf mag = abs32(r);
  vf known = abs32(e_r) + abs32(e_p);  // 0 exactly when both errors are
  vf t;
  if constexpr (kFused) {
    // One rounding fewer each; an FMA's product error below 2^-149 is covered by the 2^-126.
    vf terms = kAlphaExact ? known : fma32(bound_delta, abs32(delta), known);
    t = fma32(terms, splat_f(1.0f + 0x1p-18f), splat_f(0x1p-126f));
  } else {
    t = (known + bound_delta * abs32(delta)) * (1.0f + 0x1p-18f) + 0x1p-126f;
    usable &= (abs32(p) >= 0x1p-80f) | (delta == 0.0f);  // Dekker's product needs no underflow
  }
  // Also excludes |r| < 2^-112 (t >= 2^-126: no subnormal r, r +- u, and no zero) and, through
  // a NaN t, every overflow of r or of an error term.
  usable &= t <= 0x1p-14f * mag;
  // x = r exactly. |p| >= 2^-101: a32 δ has at most 48 significant bits, so its error is a
  // multiple of 2^-149 and a zero e_p is a zero error, not an underflow.
  vi32 exact = {};
  if constexpr (kAlphaExact) exact = (known == 0.0f) & (abs32(p) >= 0x1p-101f);
  if constexpr (OUT == BF16) {
    // One comparison with the cell's midpoint instead of rounding both ends of an interval.
    // r is normal (|r| > 2^-113), so m has r's sign and binade and r - m is exact.
    vf mid = (vf)(((vu32)r & 0xffff0000u) | 0x8000u);
    decided = usable & ((vi32)(abs32(r - mid) > t) | exact);
    return round_out<OUT>(r);
  } else {
    vf u = kFused ? fma32(mag, splat_f(0x1p-22f), t) : t + 0x1p-22f * mag;
    u = (vf)((vi32)u & ~exact);
    vu32 low = round_out<OUT>(r - u);
    vu32 high = round_out<OUT>(r + u);
    decided = usable & (vi32)(low == high);
    return low;
  }
}

// ---- loads and stores ------------------------------------------------------------------------

// A register of 16-bit values zero-extended into 32-bit lanes: one widening load where the
// level has it. GCC (12) splits the portable form into half loads, extractions and inserts,
// some ten instructions a register of stage 1 on AVX-512.
EXPO_INLINE vu32 load_widen16(const uint16_t* p) {
#if EXPO_VBYTES == 64
  // The zero-masked form: the plain one trips GCC 12's -Wmaybe-uninitialized in its own header.
  return (vu32)_mm512_maskz_cvtepu16_epi32(
      0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif EXPO_VBYTES == 32
  return (vu32)_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  typedef uint16_t vt __attribute__((vector_size(2 * L32)));
  vt raw;
  std::memcpy(&raw, p, sizeof(raw));
  return __builtin_convertvector(raw, vu32);
#endif
}

template <int F, class V, int N>
EXPO_INLINE V load(const typename Storage<F>::type* p) {
  using T = typename Storage<F>::type;
  if constexpr (sizeof(T) == 2 && std::is_same<V, vu32>::value) {
    return load_widen16(p);
  } else {
    typedef T vt __attribute__((vector_size(sizeof(T) * N)));
    vt raw;
    std::memcpy(&raw, p, sizeof(raw));
    return __builtin_convertvector(raw, V);
  }
}

template <int F, class V, int N>
EXPO_INLINE void store(typename Storage<F>::type* p, V bits) {
  using T = typename Storage<F>::type;
  typedef T vt __attribute__((vector_size(sizeof(T) * N)));
  vt raw = __builtin_convertvector(bits, vt);
  std::memcpy(p, &raw, sizeof(raw));
}

// ---- stage 1's words -------------------------------------------------------------------------
// A 16-bit input in a 32-bit lane sits where its float32 value needs it: BF16 in the upper half
// (the word is the float32 itself), F16 in the lower half (decode32 rebiases it).

template <int F>
EXPO_INLINE vu32 load_words(const uint16_t* p) {
  vu32 raw = load_widen16(p);
  return F == BF16 ? raw << 16 : raw;
}

template <int F>
EXPO_INLINE vf word_value(vu32 word) {
  if constexpr (F == BF16) {
    return (vf)word;
  } else {
    return decode32<F>(word);
  }
}

// The word stage 2 gets for one lane: DPO bits in the low half, SFT bits in the high half.
template <int D, int S>
EXPO_INLINE vu32 both_inputs(vu32 dword, vu32 sword) {
  return (D == BF16 ? dword >> 16 : dword) | (S == BF16 ? sword : sword << 16);
}

#if EXPO_VBYTES >= 32
// Two registers of words from one load of 2·L32 16-bit values, one unpack each: within every
// 128-bit lane, `lo` gets the first four of that lane's eight values and `hi` the last four, so
// lane j of `lo` holds element 8(j / 4) + j % 4 and lane j of `hi` the element four after it.
// store_pairs packs two registers of 16-bit results back into element order with one
// instruction, where narrowing each register costs two.
template <int F>
EXPO_INLINE void load_word_pairs(const uint16_t* p, vu32& lo, vu32& hi) {
#if EXPO_VBYTES == 64
  const __m512i x = _mm512_loadu_si512(p), zero = _mm512_setzero_si512();
  lo = (vu32)(F == BF16 ? _mm512_unpacklo_epi16(zero, x) : _mm512_unpacklo_epi16(x, zero));
  hi = (vu32)(F == BF16 ? _mm512_unpackhi_epi16(zero, x) : _mm512_unpackhi_epi16(x, zero));
#else
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i zero = _mm256_setzero_si256();
  lo = (vu32)(F == BF16 ? _mm256_unpacklo_epi16(zero, x) : _mm256_unpacklo_epi16(x, zero));
  hi = (vu32)(F == BF16 ? _mm256_unpackhi_epi16(zero, x) : _mm256_unpackhi_epi16(x, zero));
#endif
}
// Results below 2^16 (16-bit output bits), so the unsigned saturation never applies.
EXPO_INLINE void store_pairs(uint16_t* p, vu32 lo, vu32 hi) {
#if EXPO_VBYTES == 64
  _mm512_storeu_si512(p, _mm512_packus_epi32((__m512i)lo, (__m512i)hi));
#else
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_packus_epi32((__m256i)lo, (__m256i)hi));
#endif
}
#endif

// Copies the undecided lanes' inputs (both_inputs) and indices aside; returns the new count. Out
// of line: the hot loop then keeps no register for this rare path.
__attribute__((noinline)) int set_aside(uint32_t* hd, uint32_t* hi, int count, vu32 inputs,
                                        vu32 index, unsigned undecided) {
  compress_store(hd + count, inputs, undecided);
  compress_store(hi + count, index, undecided);
  return count + __builtin_popcount(undecided);
}

// Stage 1 over the full registers of one block (m elements); the undecided lanes are set aside
// into hd/hi from `count` on. Returns the index of the first element not done (the block's tail).
// kBranchless: set lanes aside without a branch, for blocks where many are (dense data at an α
// such as 0.3, where 4 % of the results sit next to a midpoint): a branch taken for a third of
// the registers costs more than the copies. Same bits either way; only the speed depends on it.
template <int D, int S, int O, bool kAlphaExact, bool kBranchless>
EXPO_INLINE int stage1_block(const uint16_t* db, const uint16_t* sb, uint16_t* ob, int m, vf a32,
                             vf bound_delta, uint32_t* hd, uint32_t* hi, int& count) {
  auto keep = [&](vu32 dword, vu32 sword, vu32 index, vi32 decided) {
    unsigned undecided = undecided_bits(decided);
    if (kBranchless) {
      compress_store(hd + count, both_inputs<D, S>(dword, sword), undecided);
      compress_store(hi + count, index, undecided);
      count += __builtin_popcount(undecided);
    } else if (__builtin_expect(undecided != 0, 0)) {
      count = set_aside(hd, hi, count, both_inputs<D, S>(dword, sword), index, undecided);
    }
  };
  vu32 iota;
  for (int lane = 0; lane < L32; ++lane) iota[lane] = lane;
  int i = 0;
#if EXPO_VBYTES >= 32
  vu32 pair_lo, pair_hi;
  for (int lane = 0; lane < L32; ++lane) pair_lo[lane] = 8 * (lane / 4) + lane % 4;
  pair_hi = pair_lo + 4u;
  for (; i + 2 * L32 <= m; i += 2 * L32) {
    vu32 dlo, dhi, slo, shi;
    load_word_pairs<D>(db + i, dlo, dhi);
    load_word_pairs<S>(sb + i, slo, shi);
    vi32 decided_lo, decided_hi;
    vu32 lo = stage1_lanes<O, kAlphaExact>(word_value<D>(dlo), word_value<S>(slo), a32,
                                           bound_delta, decided_lo);
    vu32 hi_bits = stage1_lanes<O, kAlphaExact>(word_value<D>(dhi), word_value<S>(shi), a32,
                                                bound_delta, decided_hi);
    store_pairs(ob + i, lo, hi_bits);
    const uint32_t at = static_cast<uint32_t>(i);
    keep(dlo, slo, pair_lo + at, decided_lo);
    keep(dhi, shi, pair_hi + at, decided_hi);
  }
#endif
  for (; i + L32 <= m; i += L32) {
    vu32 dword = load_words<D>(db + i);
    vu32 sword = load_words<S>(sb + i);
    vi32 decided;
    vu32 bits = stage1_lanes<O, kAlphaExact>(word_value<D>(dword), word_value<S>(sword), a32,
                                             bound_delta, decided);
    store<O, vu32, L32>(ob + i, bits);
    keep(dword, sword, iota + static_cast<uint32_t>(i), decided);
  }
  return i;
}

// ---- the loop ----------------------------------------------------------------------------------

// Blocks of kBlock elements. Stage 1 (float32, or the float64 fast path for F32 formats) runs
// over every full register of the block and stores its bits; the inputs of lanes it leaves
// undecided (and of the block's tail) are copied aside with their index. Stages 2 and 3 then run
// on those copies only and overwrite the outputs at the saved indices. Each element's inputs are
// read before its output is written and never again afterwards, so `out` may be `dpo` or `sft`.
constexpr int kBlock = 1024;

template <int D, int S, int O, bool kAlphaExact>
EXPO_INLINE void loop(const void* dpo, const void* sft, void* out, ptrdiff_t n, double alpha_s) {
  using DT = typename Storage<D>::type;
  using ST = typename Storage<S>::type;
  using OT = typename Storage<O>::type;
  constexpr bool kStage32 = D != F32 && S != F32 && O != F32;
  constexpr int W = kStage32 ? L32 : L64;
  typedef uint32_t vh __attribute__((vector_size(4 * L64)));  // L64 lanes of 32 bits
  const DT* dp = static_cast<const DT*>(dpo);
  const ST* sp = static_cast<const ST*>(sft);
  OT* op = static_cast<OT*>(out);
  const vd alpha = splat(alpha_s);
  // At most 29 significant bits: the low 24 of the 52 stored mantissa bits are zero.
  uint64_t alpha_bits;
  std::memcpy(&alpha_bits, &alpha_s, sizeof alpha_bits);
  const bool short_alpha = (alpha_bits & ((uint64_t{1} << 24) - 1)) == 0;
  const Alpha32 a = split_alpha(alpha_s);
  const vf a32 = splat_f(a.a32), bound_delta = splat_f(a.bound);
  vi lane64;
  for (int lane = 0; lane < L64; ++lane) lane64[lane] = lane;
  bool many_undecided = false;

  // The undecided lanes' input bits and indices; room for a whole register past the end. After
  // stage 1 (16-bit inputs) hd holds both inputs of a lane and hs is unused.
  alignas(64) uint32_t hd[kBlock + L32] = {};
  alignas(64) uint32_t hs[kBlock + L32] = {};
  alignas(64) uint32_t hi[kBlock + L32] = {};
  for (ptrdiff_t base = 0; base < n; base += kBlock) {
    const int m = n - base < kBlock ? static_cast<int>(n - base) : kBlock;
    const DT* db = dp + base;
    const ST* sb = sp + base;
    OT* ob = op + base;
    int count = 0;
    int i = 0;
    if constexpr (kStage32) {
      i = many_undecided
              ? stage1_block<D, S, O, kAlphaExact, true>(db, sb, ob, m, a32, bound_delta, hd, hi,
                                                          count)
              : stage1_block<D, S, O, kAlphaExact, false>(db, sb, ob, m, a32, bound_delta, hd,
                                                           hi, count);
      many_undecided = count > kBlock / 64;
    } else {
      for (; i + W <= m; i += W) {
        vu draw = load<D, vu, L64>(db + i);
        vu sraw = load<S, vu, L64>(sb + i);
        vi easy;
        vu bits = fast_lanes<O>(decode<D>(draw), decode<S>(sraw), alpha, short_alpha, easy);
        store<O, vu, L64>(ob + i, bits);
        if (!all64(easy)) {
          for (int lane = 0; lane < W; ++lane) {
            hd[count] = static_cast<uint32_t>(draw[lane]);
            hs[count] = static_cast<uint32_t>(sraw[lane]);
            hi[count] = i + lane;
            count += easy[lane] == 0;
          }
        }
      }
    }
    for (; i < m; ++i) {
      if constexpr (kStage32) {
        hd[count] = uint32_t{db[i]} | uint32_t{sb[i]} << 16;
      } else {
        hd[count] = db[i];
        hs[count] = sb[i];
      }
      hi[count++] = i;
    }
    for (int j = 0; j < count; j += L64) {
      const int g = count - j < L64 ? count - j : L64;
      vh draw, sraw;
      std::memcpy(&draw, hd + j, sizeof draw);  // lanes from g on: stale, ignored below
      if constexpr (kStage32) {
        sraw = draw >> 16;
        draw &= 0xffffu;
      } else {
        std::memcpy(&sraw, hs + j, sizeof sraw);
      }
      vi done;
      vu bits;
      if constexpr (kStage32) {
        // Lanes from stage 1 sit next to a midpoint: the float64 fast path (a bound no tighter
        // than stage 1's) would fail them, so they go straight to the second stage. The inputs
        // are decoded as stage 1 does and widened, both exact (a non-finite input becomes inf
        // or NaN and fails the second stage); fewer operations than decode's. For a BF16
        // output the second stage's cell covers the normal range only, all but results
        // below 2^-126, which the exact path settles.
        typedef float vfh __attribute__((vector_size(4 * L64)));
        vd d = __builtin_convertvector((decode32<D, vh, vfh>(draw)), vd);
        vd s = __builtin_convertvector((decode32<S, vh, vfh>(sraw)), vd);
        using NearCell = typename std::conditional<O == BF16, NormalCell<O>, Cell<O>>::type;
        vi near;
        bits = near_lanes<O, NearCell>(d, s, alpha, near);
        done = near | (lane64 >= g);
      } else {
        vd d = decode<D>(__builtin_convertvector(draw, vu) & splat_u(kStorageMask<D>));
        vd s = decode<S>(__builtin_convertvector(sraw, vu) & splat_u(kStorageMask<S>));
        vi easy, near;
        bits = fast_lanes<O>(d, s, alpha, short_alpha, easy);
        vu near_bits = near_lanes<O>(d, s, alpha, near);
        bits = (~easy & near) ? near_bits : bits;
        done = easy | near | (lane64 >= g);
      }
      if (!all64(done)) {
        vd d = decode<D>(__builtin_convertvector(draw, vu) & splat_u(kStorageMask<D>));
        vd s = decode<S>(__builtin_convertvector(sraw, vu) & splat_u(kStorageMask<S>));
        bits = done ? bits : exact_lanes<O>(d, s, alpha);
      }
      OT ot[L64];
      store<O, vu, L64>(ot, bits);
      for (int lane = 0; lane < g; ++lane) ob[hi[j + lane]] = ot[lane];
    }
  }
}

// The bench's inexact ceiling: BF16 in, float32 arithmetic, BF16 out (round to nearest even
// by the usual integer trick; NaN is not handled).
EXPO_INLINE void plain(const uint16_t* dpo, const uint16_t* sft, uint16_t* out, ptrdiff_t n,
                       float alpha) {
  const vf a = splat_f(alpha);
  ptrdiff_t i = 0;
  for (; i + L32 <= n; i += L32) {
    vf d = (vf)(load<BF16, vu32, L32>(dpo + i) << 16);
    vf s = (vf)(load<BF16, vu32, L32>(sft + i) << 16);
    vu32 u = (vu32)(d + a * (d - s));
    store<BF16, vu32, L32>(out + i, (u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  for (; i < n; ++i) {
    float d, s;
    uint32_t db = uint32_t{dpo[i]} << 16, sb = uint32_t{sft[i]} << 16, u;
    std::memcpy(&d, &db, 4);
    std::memcpy(&s, &sb, 4);
    float r = d + alpha * (d - s);
    std::memcpy(&u, &r, 4);
    out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

template <int D, int S, int O>
EXPO_INLINE void run_case(const void* dpo, const void* sft, void* out, ptrdiff_t n, double alpha) {
  if constexpr (D != F32 && S != F32 && O != F32) {
    if (split_alpha(alpha).exact) {
      loop<D, S, O, true>(dpo, sft, out, n, alpha);
      return;
    }
  }
  loop<D, S, O, false>(dpo, sft, out, n, alpha);
}

}  // namespace

#define EXPO_CASE(D, S, O) \
  case (D)*9 + (S)*3 + (O): run_case<D, S, O>(dpo, sft, out, n, alpha); break;
#define EXPO_CASES_O(D, S) EXPO_CASE(D, S, BF16) EXPO_CASE(D, S, F16) EXPO_CASE(D, S, F32)
#define EXPO_CASES_S(D) EXPO_CASES_O(D, BF16) EXPO_CASES_O(D, F16) EXPO_CASES_O(D, F32)

void EXPO_RUN(const void* dpo, int dc, const void* sft, int sc, void* out, int oc, ptrdiff_t n,
              double alpha) {
  switch (dc * 9 + sc * 3 + oc) {
    EXPO_CASES_S(BF16)
    EXPO_CASES_S(F16)
    EXPO_CASES_S(F32)
    default: break;
  }
}

void EXPO_PLAIN(const uint16_t* dpo, const uint16_t* sft, uint16_t* out, ptrdiff_t n,
                float alpha) {
  plain(dpo, sft, out, n, alpha);
}

#undef EXPO_CASE
#undef EXPO_CASES_O
#undef EXPO_CASES_S

}  // namespace expo
