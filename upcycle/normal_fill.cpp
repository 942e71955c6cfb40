// Normal values from stream words (see rng_stream.h): u from the word, z = sqrt(2) erfinv(2u-1)
// by Giles' single-precision approximation, and the fill kernels reinit_elements /
// normal_elements. Two implementations with identical bits: a scalar reference and AVX-512
// kernels that run the same IEEE operations in the same order. In element mode only the
// re-initialised lanes need a normal value, so the AVX-512 kernel compresses their u values
// into a dense buffer, evaluates the normals there and expands them back: at ratio 0.5 that
// halves the work of the most expensive step.
// GCC 12 flags the intrinsics' deliberately undefined pass-through operands (GCC bug 105593).
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
constexpr float kSqrt2 = 1.41421356f;
constexpr float kLn2 = 0.693147181f;
constexpr float kL3 = 1.f / 3.f, kL5 = 1.f / 5.f, kL7 = 1.f / 7.f, kL9 = 1.f / 9.f;
// Giles (2011), single precision: erfinv(x) = p(w) x with w = -log((1 - x)(1 + x)).
constexpr float kCentral[9] = {2.81022636e-08f,  3.43273939e-07f, -3.5233877e-06f,
                               -4.39150654e-06f, 0.00021858087f,  -0.00125372503f,
                               -0.00417768164f,  0.246640727f,    1.50140941f};
constexpr float kTail[9] = {-0.000200214257f, 0.000100950558f, 0.00134934322f,
                            -0.00367342844f,  0.00573950773f,  -0.0076224613f,
                            0.00943887047f,   1.00167406f,     2.83297682f};

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

// Estrin's scheme for the degree-8 polynomial c[0] w^8 + ... + c[8]: a dependency depth of 4
// multiply-adds instead of Horner's 8, so the kernel is not bound by latency. The scalar
// reference (estrin below) evaluates the same expression tree.
MOEKIT_AVX512 inline __m512 estrin16(const float* c, __m512 w) {
  auto lin = [&](int a, int b) {  // c[a] w + c[b]
    return _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(c[a]), w), _mm512_set1_ps(c[b]));
  };
  const __m512 w2 = _mm512_mul_ps(w, w), w4 = _mm512_mul_ps(w2, w2);
  const __m512 r0 = _mm512_add_ps(_mm512_mul_ps(lin(5, 6), w2), lin(7, 8));
  const __m512 r1 = _mm512_add_ps(_mm512_mul_ps(lin(1, 2), w2), lin(3, 4));
  const __m512 s0 = _mm512_add_ps(_mm512_mul_ps(r1, w4), r0);
  return _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(c[0]), _mm512_mul_ps(w4, w4)), s0);
}

MOEKIT_AVX512 inline __m512 normal16(__m512 u) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 t = _mm512_mul_ps(_mm512_mul_ps(u, _mm512_sub_ps(one, u)), _mm512_set1_ps(4.f));
  // log t = e ln2 + log m, m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) / (m + 1).
  const __m512i b = _mm512_castps_si512(t);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(127));
  __m512 m = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFF)), _mm512_set1_epi32(0x3F800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(kSqrt2), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
  const __m512 f = _mm512_sub_ps(m, one);
  const __m512 s = _mm512_div_ps(f, _mm512_add_ps(f, _mm512_set1_ps(2.f)));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 q = _mm512_set1_ps(kL9);
  q = _mm512_add_ps(_mm512_mul_ps(q, s2), _mm512_set1_ps(kL7));
  q = _mm512_add_ps(_mm512_mul_ps(q, s2), _mm512_set1_ps(kL5));
  q = _mm512_add_ps(_mm512_mul_ps(q, s2), _mm512_set1_ps(kL3));
  q = _mm512_add_ps(_mm512_mul_ps(q, s2), one);
  const __m512 lm = _mm512_mul_ps(_mm512_add_ps(s, s), q);
  const __m512 lt = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(e), _mm512_set1_ps(kLn2)), lm);
  const __m512 w = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(lt), _mm512_set1_epi32(INT32_MIN)));
  __m512 p = estrin16(kCentral, _mm512_sub_ps(w, _mm512_set1_ps(2.5f)));
  const __mmask16 tail = _mm512_cmp_ps_mask(w, _mm512_set1_ps(5.f), _CMP_GE_OQ);
  if (tail) {  // |z| > 2.9: 0.3% of lanes
    const __m512 p2 = estrin16(kTail, _mm512_sub_ps(_mm512_sqrt_ps(w), _mm512_set1_ps(3.f)));
    p = _mm512_mask_blend_ps(tail, p, p2);
  }
  const __m512 x = _mm512_sub_ps(_mm512_add_ps(u, u), one);
  return _mm512_mul_ps(_mm512_mul_ps(p, x), _mm512_set1_ps(kSqrt2));
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
      _mm512_store_ps(buf + j + 16 * k,
                      _mm512_add_ps(mv, _mm512_mul_ps(sv, normal16(_mm512_load_ps(buf + j + 16 * k)))));
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
    _mm512_mask_storeu_ps(y + i, lanes, _mm512_add_ps(mv, _mm512_mul_ps(sv, normal16(u))));
  }
}

bool use_avx512() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return ok && !detail::scalar_forced();
}

float estrin(const float* c, float w) {
  const float w2 = w * w, w4 = w2 * w2;
  const float r0 = (c[5] * w + c[6]) * w2 + (c[7] * w + c[8]);
  const float r1 = (c[1] * w + c[2]) * w2 + (c[3] * w + c[4]);
  const float s0 = r1 * w4 + r0;
  return c[0] * (w4 * w4) + s0;
}

}  // namespace

// ---- scalar reference ---------------------------------------------------------------------

float uniform_from_word(uint32_t w, uint64_t thr) {
  MOEKIT_CHECK(thr > 0 && thr <= (uint64_t{1} << 32), "uniform_from_word: threshold ", thr, " outside (0, 2^32]");
  return u_of(w, word_map(thr));
}

float normal_from_uniform(float u) {
  const float t = (u * (1.f - u)) * 4.f;
  uint32_t b;
  std::memcpy(&b, &t, 4);
  int32_t e = static_cast<int32_t>(b >> 23) - 127;
  const uint32_t mb = (b & 0x7FFFFFu) | 0x3F800000u;
  float m;
  std::memcpy(&m, &mb, 4);
  if (m > kSqrt2) {
    m = m * 0.5f;
    e = e + 1;
  }
  const float f = m - 1.f;
  const float s = f / (f + 2.f);
  const float s2 = s * s;
  float q = kL9;
  q = q * s2 + kL7;
  q = q * s2 + kL5;
  q = q * s2 + kL3;
  q = q * s2 + 1.f;
  const float lm = (s + s) * q;
  const float w = -(static_cast<float>(e) * kLn2 + lm);
  const bool tail = !(w < 5.f);
  const float* c = tail ? kTail : kCentral;
  const float x0 = tail ? std::sqrt(w) - 3.f : w - 2.5f;
  const float p = estrin(c, x0);
  const float x = (u + u) - 1.f;
  return (p * x) * kSqrt2;
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
  const bool simd = use_avx512();
  const auto t32 = static_cast<uint32_t>(thr);
  alignas(64) uint32_t w[kChunk];
  uint64_t count = 0;
  for (size_t off = 0; off < n; off += kChunk) {
    const size_t len = std::min(kChunk, n - off);
    stream_words(key, idx0 + off, len, w);
    if (simd) {
      count += select_avx512(y + off, src + off, w, len, t32, m, mean, std);
      continue;
    }
    for (size_t i = 0; i < len; ++i) {
      const bool hit = w[i] < t32;
      y[off + i] = hit ? mean + std * normal_from_uniform(u_of(w[i], m)) : src[off + i];
      count += hit;
    }
  }
  return count;
}

void normal_elements(float* y, size_t n, const PhiloxKey& key, uint64_t idx0, float mean, float std) {
  const WordMap m = word_map(uint64_t{1} << 32);
  const bool simd = use_avx512();
  alignas(64) uint32_t w[kChunk];
  for (size_t off = 0; off < n; off += kChunk) {
    const size_t len = std::min(kChunk, n - off);
    stream_words(key, idx0 + off, len, w);
    if (simd) {
      normal_avx512(y + off, w, len, m, mean, std);
      continue;
    }
    for (size_t i = 0; i < len; ++i) y[off + i] = mean + std * normal_from_uniform(u_of(w[i], m));
  }
}

const char* normal_kernel_name() { return use_avx512() ? "avx512" : "scalar"; }

}  // namespace moekit::upcycle
