// Normal values from stream words (see rng_stream.h): u from the word, z = Phi^-1(u) by a
// piecewise polynomial (normal_table.inc, fitted by tests/reference/fit_normal_table.py), and
// the fill kernels reinit_elements / normal_elements. Three implementations with identical
// bits: a scalar reference, and AVX-512 and AVX2 kernels that run the same IEEE operations
// (fused multiply-adds included) in the same order. In element mode only the re-initialised
// lanes need a normal value, so the AVX-512 kernel compresses their u values into a dense
// buffer, evaluates the normals there and expands them back: at ratio 0.5 that halves the work
// of the most expensive step. AVX2 has no compress; it evaluates every lane and blends.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "upcycle/rng_stream.h"

// After the includes, so it applies to this file's functions only: no a*b+c fusion, the scalar
// reference and the SIMD kernels must round alike.
#pragma GCC optimize("fp-contract=off")

namespace moekit::upcycle {
namespace {

constexpr size_t kChunk = 2048;          // words per stack buffer
constexpr float kUMax = 0.99999994f;     // 1 - 2^-24, largest float below 1
// The inverse CDF: |z| = g(v) with one degree-7 polynomial per segment (normal_table.inc).
//   r = max(min(u, 1 - u), 2^-25), exact; the clamp only matters for u outside a word's range.
//   r <= 1/4: v = r, segment e + 25 for r in [2^e, 2^(e+1)), in t = mantissa(r) - 1.5;
//   r > 1/4:  v = s = 1/2 - r (exact), segment e + 30 for s in [2^e, 2^(e+1)), same t,
//             or segment 28 with t = s itself when s < 2^-6 (an odd polynomial: g(0) = 0).
//   z = g with the sign of u - 1/2.
// The segment is the float exponent of v (biased: minus 102 for r, 97 for s), so the lookup is
// a register permute of 32 coefficients; no log, division or branch.
#include "upcycle/normal_table.inc"
constexpr float kRMin = 2.98023224e-08f;  // 2^-25, the smallest r a word gives
constexpr float kSmallS = 0.015625f;       // 2^-6
constexpr int kSmallSegment = 28;
static_assert(kNormalSegments == kSmallSegment + 1 && kNormalDegree == 7, "normal_table.inc does not match");

struct WordMap {
  int shift = 8;
  float scale = 1.f / 16777216.f;
};

// Keep 24 bits of the word range [0, thr): u = ((w >> shift) + 1/2) * 2^shift / thr.
WordMap word_map(uint64_t thr) {
  WordMap m;
  const int bits = thr <= 1 ? 0 : 64 - __builtin_clzll(thr - 1);
  m.shift = std::max(0, bits - 24);
  m.scale = static_cast<float>(static_cast<double>(uint64_t{1} << m.shift) / static_cast<double>(thr));
  return m;
}

inline float u_of(uint32_t w, const WordMap& m) {
  const float u = (static_cast<float>(static_cast<int32_t>(w >> m.shift)) + 0.5f) * m.scale;
  return std::min(u, kUMax);
}

// ---- AVX-512 ------------------------------------------------------------------------------

#define MOEKIT_AVX512 __attribute__((target("avx512f")))

// Coefficient k of each lane's segment: a permute across the table's two 16-entry halves.
MOEKIT_AVX512 inline __m512 coef16(int k, __m512i idx) {
  return _mm512_permutex2var_ps(_mm512_load_ps(kNormalCoef[k]), idx, _mm512_load_ps(kNormalCoef[k] + 16));
}

MOEKIT_AVX512 inline __m512 normal16(__m512 u) {
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 r = _mm512_max_ps(_mm512_min_ps(u, _mm512_sub_ps(_mm512_set1_ps(1.f), u)), _mm512_set1_ps(kRMin));
  const __mmask16 central = _mm512_cmp_ps_mask(r, _mm512_set1_ps(0.25f), _CMP_GT_OQ);
  const __m512 s = _mm512_sub_ps(half, r);
  const __m512i vb = _mm512_castps_si512(_mm512_mask_blend_ps(central, r, s));
  __m512i idx = _mm512_sub_epi32(_mm512_srli_epi32(vb, 23), _mm512_set1_epi32(102));
  idx = _mm512_mask_add_epi32(idx, central, idx, _mm512_set1_epi32(5));
  // mantissa: (vb & 0x7FFFFF) | 0x3F800000 in one ternary-logic op (bit-select by the mask).
  const __m512 m = _mm512_castsi512_ps(
      _mm512_ternarylogic_epi32(_mm512_set1_epi32(0x7FFFFF), vb, _mm512_set1_epi32(0x3F800000), 0xCA));
  __m512 t = _mm512_sub_ps(m, _mm512_set1_ps(1.5f));
  const __mmask16 small = _mm512_mask_cmp_ps_mask(central, s, _mm512_set1_ps(kSmallS), _CMP_LT_OQ);
  idx = _mm512_mask_mov_epi32(idx, small, _mm512_set1_epi32(kSmallSegment));
  t = _mm512_mask_mov_ps(t, small, s);
  __m512 g = coef16(7, idx);
  for (int k = 6; k >= 0; --k) g = _mm512_fmadd_ps(g, t, coef16(k, idx));
  // Sign of u - 1/2 (u = 1/2 gives +0 and g = 0).
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(u, half)), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(g), sign));
}

MOEKIT_AVX512 inline __m512 u16(__m512i w, const WordMap& m) {
  const __m512 v = _mm512_cvtepi32_ps(_mm512_srl_epi32(w, _mm_cvtsi32_si128(m.shift)));
  return _mm512_min_ps(_mm512_mul_ps(_mm512_add_ps(v, _mm512_set1_ps(0.5f)), _mm512_set1_ps(m.scale)),
                       _mm512_set1_ps(kUMax));
}

inline __mmask16 lanes_of(size_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

MOEKIT_AVX512 uint64_t select_avx512(float* y, const float* src, const uint32_t* w, size_t n, uint32_t thr,
                                     const WordMap& m, float mean, float std) {
  alignas(64) float buf[kChunk + 64];
  __mmask16 hits[kChunk / 16];
  const __m512i tv = _mm512_set1_epi32(static_cast<int>(thr));
  size_t cnt = 0;
  for (size_t i = 0; i < n; i += 16) {  // 1: compress the u of re-initialised lanes
    const __mmask16 lanes = lanes_of(n - i);
    const __m512i wv = _mm512_maskz_loadu_epi32(lanes, w + i);
    const __mmask16 hit = _mm512_mask_cmplt_epu32_mask(lanes, wv, tv);
    hits[i / 16] = hit;
    if (hit) {
      // Compress in a register, then a plain store (the lanes past the hits are overwritten
      // next): the memory-destination compress is microcoded and ~20x slower on Zen 4.
      _mm512_storeu_ps(buf + cnt, _mm512_maskz_compress_ps(hit, u16(wv, m)));
      cnt += static_cast<size_t>(__builtin_popcount(hit));
    }
  }
  std::fill(buf + cnt, buf + cnt + 64, 0.5f);
  const __m512 mv = _mm512_set1_ps(mean), sv = _mm512_set1_ps(std);
  for (size_t j = 0; j < cnt; j += 64)  // 2: dense normals, four independent vectors at a time
    for (int k = 0; k < 4; ++k)
      _mm512_store_ps(buf + j + 16 * k, _mm512_fmadd_ps(sv, normal16(_mm512_load_ps(buf + j + 16 * k)), mv));
  size_t off = 0;
  for (size_t i = 0; i < n; i += 16) {  // 3: expand into place
    const __mmask16 lanes = lanes_of(n - i), hit = hits[i / 16];
    __m512 v = _mm512_maskz_loadu_ps(lanes, src + i);
    if (hit) {  // a plain load and a register expand, for the same reason
      v = _mm512_mask_expand_ps(v, hit, _mm512_loadu_ps(buf + off));
      off += static_cast<size_t>(__builtin_popcount(hit));
    }
    _mm512_mask_storeu_ps(y + i, lanes, v);
  }
  return cnt;
}

MOEKIT_AVX512 void normal_avx512(float* y, const uint32_t* w, size_t n, const WordMap& m, float mean, float std) {
  const __m512 mv = _mm512_set1_ps(mean), sv = _mm512_set1_ps(std);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = lanes_of(n - i);
    const __m512 u = u16(_mm512_maskz_loadu_epi32(lanes, w + i), m);
    _mm512_mask_storeu_ps(y + i, lanes, _mm512_fmadd_ps(sv, normal16(u), mv));
  }
}

MOEKIT_AVX512 void normal_of_u_avx512(const float* u, size_t n, float* z) {
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = lanes_of(n - i);
    _mm512_mask_storeu_ps(z + i, lanes, normal16(_mm512_mask_loadu_ps(_mm512_set1_ps(0.5f), lanes, u + i)));
  }
}

// ---- AVX2 + FMA: the same operations on 8 lanes, without compression (every lane gets a
// normal, the hits are blended in); the coefficient lookup is four 8-entry permutes and two
// levels of blends on bits 3 and 4 of the segment. Tails go to the scalar code.

#define MOEKIT_AVX2 __attribute__((target("avx2,fma")))

MOEKIT_AVX2 inline __m256 coef8(int k, __m256i idx) {
  const float* c = kNormalCoef[k];
  const __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 in the sign bit
  const __m256 b4 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));  // bit 4 in the sign bit
  const __m256 lo = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_load_ps(c), idx),
                                     _mm256_permutevar8x32_ps(_mm256_load_ps(c + 8), idx), b3);
  const __m256 hi = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_load_ps(c + 16), idx),
                                     _mm256_permutevar8x32_ps(_mm256_load_ps(c + 24), idx), b3);
  return _mm256_blendv_ps(lo, hi, b4);
}

MOEKIT_AVX2 inline __m256 normal8(__m256 u) {
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 r = _mm256_max_ps(_mm256_min_ps(u, _mm256_sub_ps(_mm256_set1_ps(1.f), u)), _mm256_set1_ps(kRMin));
  const __m256 central = _mm256_cmp_ps(r, _mm256_set1_ps(0.25f), _CMP_GT_OQ);
  const __m256 s = _mm256_sub_ps(half, r);
  const __m256i vb = _mm256_castps_si256(_mm256_blendv_ps(r, s, central));
  __m256i idx = _mm256_sub_epi32(_mm256_srli_epi32(vb, 23), _mm256_set1_epi32(102));
  idx = _mm256_add_epi32(idx, _mm256_and_si256(_mm256_castps_si256(central), _mm256_set1_epi32(5)));
  const __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(vb, _mm256_set1_epi32(0x7FFFFF)),
                                                       _mm256_set1_epi32(0x3F800000)));
  __m256 t = _mm256_sub_ps(m, _mm256_set1_ps(1.5f));
  const __m256 small = _mm256_and_ps(central, _mm256_cmp_ps(s, _mm256_set1_ps(kSmallS), _CMP_LT_OQ));
  idx = _mm256_blendv_epi8(idx, _mm256_set1_epi32(kSmallSegment), _mm256_castps_si256(small));
  t = _mm256_blendv_ps(t, s, small);
  __m256 g = coef8(7, idx);
  for (int k = 6; k >= 0; --k) g = _mm256_fmadd_ps(g, t, coef8(k, idx));
  const __m256 sign = _mm256_and_ps(_mm256_sub_ps(u, half), _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN)));
  return _mm256_xor_ps(g, sign);
}

MOEKIT_AVX2 inline __m256 u8(__m256i w, const WordMap& m) {
  const __m256 v = _mm256_cvtepi32_ps(_mm256_srl_epi32(w, _mm_cvtsi32_si128(m.shift)));
  return _mm256_min_ps(_mm256_mul_ps(_mm256_add_ps(v, _mm256_set1_ps(0.5f)), _mm256_set1_ps(m.scale)),
                       _mm256_set1_ps(kUMax));
}

uint64_t select_scalar(float* y, const float* src, const uint32_t* w, size_t n, uint32_t thr, const WordMap& m,
                       float mean, float std) {
  uint64_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool hit = w[i] < thr;
    y[i] = hit ? std::fma(std, normal_from_uniform(u_of(w[i], m)), mean) : src[i];
    count += hit;
  }
  return count;
}

void normal_scalar(float* y, const uint32_t* w, size_t n, const WordMap& m, float mean, float std) {
  for (size_t i = 0; i < n; ++i) y[i] = std::fma(std, normal_from_uniform(u_of(w[i], m)), mean);
}

MOEKIT_AVX2 uint64_t select_avx2(float* y, const float* src, const uint32_t* w, size_t n, uint32_t thr,
                                 const WordMap& m, float mean, float std) {
  const __m256i flip = _mm256_set1_epi32(INT32_MIN);  // unsigned w < thr as a signed compare
  const __m256i tv = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(thr)), flip);
  const __m256 mv = _mm256_set1_ps(mean), sv = _mm256_set1_ps(std);
  uint64_t count = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    const __m256 hit = _mm256_castsi256_ps(_mm256_cmpgt_epi32(tv, _mm256_xor_si256(wv, flip)));
    const __m256 z = _mm256_fmadd_ps(sv, normal8(u8(wv, m)), mv);
    _mm256_storeu_ps(y + i, _mm256_blendv_ps(_mm256_loadu_ps(src + i), z, hit));
    count += static_cast<uint64_t>(__builtin_popcount(_mm256_movemask_ps(hit)));
  }
  return count + select_scalar(y + i, src + i, w + i, n - i, thr, m, mean, std);
}

MOEKIT_AVX2 void normal_avx2(float* y, const uint32_t* w, size_t n, const WordMap& m, float mean, float std) {
  const __m256 mv = _mm256_set1_ps(mean), sv = _mm256_set1_ps(std);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(sv, normal8(u8(wv, m)), mv));
  }
  normal_scalar(y + i, w + i, n - i, m, mean, std);
}

MOEKIT_AVX2 void normal_of_u_avx2(const float* u, size_t n, float* z) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(z + i, normal8(_mm256_loadu_ps(u + i)));
  for (; i < n; ++i) z[i] = normal_from_uniform(u[i]);
}

}  // namespace

// ---- scalar reference ---------------------------------------------------------------------

float uniform_from_word(uint32_t w, uint64_t thr) {
  MOEKIT_CHECK(thr > 0 && thr <= (uint64_t{1} << 32), "uniform_from_word: threshold ", thr, " outside (0, 2^32]");
  return u_of(w, word_map(thr));
}

float normal_from_uniform(float u) {
  const float r = std::max(std::min(u, 1.f - u), kRMin);
  const bool central = r > 0.25f;
  const float s = 0.5f - r;
  uint32_t vb;
  std::memcpy(&vb, central ? &s : &r, 4);
  int idx = static_cast<int>(vb >> 23) - 102 + (central ? 5 : 0);
  const uint32_t mb = (vb & 0x7FFFFFu) | 0x3F800000u;
  float m;
  std::memcpy(&m, &mb, 4);
  float t = m - 1.5f;
  if (central && s < kSmallS) {
    idx = kSmallSegment;
    t = s;
  }
  idx &= 31;  // as the register permute reads it
  float g = kNormalCoef[7][idx];
  for (int k = 6; k >= 0; --k) g = std::fma(g, t, kNormalCoef[k][idx]);
  return u - 0.5f < 0.f ? -g : g;
}

uint64_t reinit_elements(float* y, const float* src, size_t n, const PhiloxKey& key, uint64_t idx0, uint64_t thr,
                         float mean, float std) {
  if (thr == 0) {
    if (y != src) std::memmove(y, src, n * sizeof(float));
    return 0;
  }
  if (thr >= (uint64_t{1} << 32)) {
    normal_elements(y, n, key, idx0, mean, std);
    return n;
  }
  const WordMap m = word_map(thr);
  const auto select = detail::avx512_kernels() ? select_avx512 : detail::avx2_kernels() ? select_avx2 : select_scalar;
  const auto t32 = static_cast<uint32_t>(thr);
  alignas(64) uint32_t w[kChunk];
  uint64_t count = 0;
  for (size_t off = 0; off < n; off += kChunk) {
    const size_t len = std::min(kChunk, n - off);
    stream_words(key, idx0 + off, len, w);
    count += select(y + off, src + off, w, len, t32, m, mean, std);
  }
  return count;
}

void normal_elements(float* y, size_t n, const PhiloxKey& key, uint64_t idx0, float mean, float std) {
  const WordMap m = word_map(uint64_t{1} << 32);
  const auto fill = detail::avx512_kernels() ? normal_avx512 : detail::avx2_kernels() ? normal_avx2 : normal_scalar;
  alignas(64) uint32_t w[kChunk];
  for (size_t off = 0; off < n; off += kChunk) {
    const size_t len = std::min(kChunk, n - off);
    stream_words(key, idx0 + off, len, w);
    fill(y + off, w, len, m, mean, std);
  }
}

void normals_from_uniforms(const float* u, size_t n, float* z) {
  if (detail::avx512_kernels()) {
    normal_of_u_avx512(u, n, z);
  } else if (detail::avx2_kernels()) {
    normal_of_u_avx2(u, n, z);
  } else {
    for (size_t i = 0; i < n; ++i) z[i] = normal_from_uniform(u[i]);
  }
}

}  // namespace moekit::upcycle
