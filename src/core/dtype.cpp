#include "core/dtype.h"

// GCC 12 flags the intrinsics' deliberately undefined pass-through operands (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "core/check.h"
#include "core/half.h"

namespace moekit {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
  }
  MOEKIT_FAIL("unknown dtype ", static_cast<int>(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
  static const struct { const char* n; DType t; } kTable[] = {
      {"F32", DType::kF32}, {"BF16", DType::kBF16}, {"F16", DType::kF16},
      {"I32", DType::kI32}, {"I64", DType::kI64}};
  for (const auto& e : kTable)
    if (name == e.n) { *out = e.t; return true; }
  return false;
}

DType dtype_parse(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "f32" || s == "fp32" || s == "float32" || s == "float") return DType::kF32;
  if (s == "bf16" || s == "bfloat16") return DType::kBF16;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::kF16;
  if (s == "i32" || s == "int32") return DType::kI32;
  if (s == "i64" || s == "int64") return DType::kI64;
  MOEKIT_FAIL("unknown dtype '", name, "' (expected one of f32, bf16, f16, i32, i64)");
}

bool dtype_is_float(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

namespace {
// The bf16 loops are exact integer bit manipulation, so every clone gives the same bits; the
// AVX-512/AVX2 clones make checkpoint conversion cost a small fraction of the I/O.
__attribute__((target_clones("avx512f", "avx2", "default"))) void bf16_from_f32(uint16_t* d, const float* s,
                                                                                 size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void bf16_to_f32_n(float* d, const uint16_t* s,
                                                                                 size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
}
// f32_to_bf16 on 16 lanes, as 16-bit values: round to nearest even, NaN -> quiet NaN.
__attribute__((target("avx512f"))) inline __m256i bf16x16(const float* p) {
  const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(p));
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x0040));
  return _mm512_cvtepi32_epi16(r);
}

// Scalar up to a 64-byte boundary of d, then 32 values per streaming store, then scalar.
__attribute__((target("avx512f"))) void bf16_from_f32_streaming_avx512(uint16_t* d, const float* s, size_t n) {
  size_t i = 0;
  for (; i < n && reinterpret_cast<uintptr_t>(d + i) % 64 != 0; ++i) d[i] = f32_to_bf16(s[i]);
  for (; i + 32 <= n; i += 32) {
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(bf16x16(s + i)), bf16x16(s + i + 16), 1);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i), v);
  }
  for (; i < n; ++i) d[i] = f32_to_bf16(s[i]);
  _mm_sfence();  // order the streaming stores before whatever hands the buffer on
}

bool has_avx512f() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return ok;
}

}  // namespace

void to_f32(float* dst, const void* src, DType src_t, size_t n) {
  switch (src_t) {
    case DType::kF32: std::memcpy(dst, src, n * 4); return;
    case DType::kBF16: bf16_to_f32_n(dst, static_cast<const uint16_t*>(src), n); return;
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    default: MOEKIT_FAIL("cannot convert ", dtype_name(src_t), " to F32: not a floating type");
  }
}

void from_f32(void* dst, DType dst_t, const float* src, size_t n) {
  switch (dst_t) {
    case DType::kF32: std::memcpy(dst, src, n * 4); return;
    case DType::kBF16: bf16_from_f32(static_cast<uint16_t*>(dst), src, n); return;
    case DType::kF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    default: MOEKIT_FAIL("cannot convert F32 to ", dtype_name(dst_t), ": not a floating type");
  }
}

void from_f32_streaming(void* dst, DType dst_t, const float* src, size_t n) {
  if (dst_t == DType::kBF16 && has_avx512f()) {
    bf16_from_f32_streaming_avx512(static_cast<uint16_t*>(dst), src, n);
    return;
  }
  from_f32(dst, dst_t, src, n);
}

}  // namespace moekit
