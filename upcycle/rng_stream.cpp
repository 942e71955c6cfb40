// Element-indexed streams: Philox-4x32-10 evaluated 16 blocks at a time (AVX-512, AVX2 or
// scalar; integer arithmetic only, so all three give the same bits), keys, thresholds.
// The normal values built from the words live in normal_fill.cpp.
#include "upcycle/rng_stream.h"

// GCC 12 flags the intrinsics' deliberately undefined pass-through operands (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/rng.h"

namespace moekit::upcycle {
namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // Philox-4x32 multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
constexpr int kTileBlocks = 16;
constexpr int kTileWords = 4 * kTileBlocks;  // elements per tile

// ---- Philox tiles: out[64 * t + 16 * i + l] = word i of block 16 * (tile0 + t) + l ----------

void philox_tiles_scalar(PhiloxKey key, uint64_t tile0, size_t ntiles, uint32_t* out) {
  for (size_t t = 0; t < ntiles; ++t) {
    for (int l = 0; l < kTileBlocks; ++l) {
      const uint64_t b = (tile0 + t) * kTileBlocks + l;
      uint32_t c0 = static_cast<uint32_t>(b), c1 = static_cast<uint32_t>(b >> 32), c2 = 0, c3 = 0;
      uint32_t k0 = key.k0, k1 = key.k1;
      for (int r = 0; r < 10; ++r) {
        const uint64_t p0 = static_cast<uint64_t>(kM0) * c0, p1 = static_cast<uint64_t>(kM1) * c2;
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
        c1 = static_cast<uint32_t>(p1);
        c3 = static_cast<uint32_t>(p0);
        c0 = n0;
        c2 = n2;
        k0 += kW0;
        k1 += kW1;
      }
      uint32_t* o = out + t * kTileWords + l;
      o[0] = c0;
      o[16] = c1;
      o[32] = c2;
      o[48] = c3;
    }
  }
}

__attribute__((target("avx2"))) void philox_tiles_avx2(PhiloxKey key, uint64_t tile0, size_t ntiles,
                                                       uint32_t* out) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kM0)), m1 = _mm256_set1_epi32(static_cast<int>(kM1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (size_t t = 0; t < ntiles; ++t) {
    for (int half = 0; half < 2; ++half) {
      const uint64_t b0 = (tile0 + t) * kTileBlocks + 8 * half;
      // Blocks b0..b0+7: the low word may wrap within the group only if b0's low word is near
      // 2^32; handle the carry into the high word per lane.
      __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b0))), lane);
      const __m256i wrapped = _mm256_cmpgt_epi32(
          _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b0))), _mm256_set1_epi32(INT32_MIN)),
          _mm256_xor_si256(c0, _mm256_set1_epi32(INT32_MIN)));
      __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b0 >> 32))), wrapped);
      __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
      uint32_t k0 = key.k0, k1 = key.k1;
      for (int r = 0; r < 10; ++r) {
        const __m256i e0 = _mm256_mul_epu32(c0, m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), m0);
        const __m256i e1 = _mm256_mul_epu32(c2, m1), o1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), m1);
        const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
        const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
        const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
        const __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
        c1 = lo1;
        c3 = lo0;
        k0 += kW0;
        k1 += kW1;
      }
      uint32_t* o = out + t * kTileWords + 8 * half;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), c0);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16), c1);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32), c2);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 48), c3);
    }
  }
}

// The 16 blocks of a tile live in two halves, even blocks and odd blocks, each word in the low
// 32 bits of a 64-bit lane: that is where the 32x32->64 multiply (vpmuludq) reads its operands
// and leaves the low half of its product, so a round needs no shuffles, only a shift for each
// high half. What a lane holds above bit 31 is ignored by the multiplies and never stored.
// The halves are interleaved into lane order once, when the words are stored.
__attribute__((target("avx512f"))) void philox_tiles_avx512(PhiloxKey key, uint64_t tile0, size_t ntiles,
                                                            uint32_t* out) {
  const __m512i m0 = _mm512_set1_epi64(kM0), m1 = _mm512_set1_epi64(kM1);
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  for (size_t t = 0; t < ntiles; ++t) {
    const uint64_t b0 = (tile0 + t) * kTileBlocks;
    __m512i x[2][4];  // [half][word]
    for (int h = 0; h < 2; ++h) {
      // Block numbers b0 + 2i + h as 64-bit lanes: word 0 is the low half, word 1 the high.
      const __m512i blk = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(b0 + h)), even);
      x[h][0] = blk;
      x[h][1] = _mm512_srli_epi64(blk, 32);
      x[h][2] = _mm512_setzero_si512();
      x[h][3] = _mm512_setzero_si512();
    }
    uint32_t k0 = key.k0, k1 = key.k1;
    for (int r = 0; r < 10; ++r) {
      const __m512i kv0 = _mm512_set1_epi32(static_cast<int>(k0)), kv1 = _mm512_set1_epi32(static_cast<int>(k1));
      for (int h = 0; h < 2; ++h) {
        const __m512i p0 = _mm512_mul_epu32(x[h][0], m0), p1 = _mm512_mul_epu32(x[h][2], m1);
        // a ^ b ^ c in one instruction (truth table 0x96); the low halves are what count.
        x[h][0] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), x[h][1], kv0, 0x96);
        x[h][2] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), x[h][3], kv1, 0x96);
        x[h][1] = p1;
        x[h][3] = p0;
      }
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t* o = out + t * kTileWords;
    for (int i = 0; i < 4; ++i)  // even blocks' words in the even lanes, odd blocks' in the odd
      _mm512_storeu_si512(o + 16 * i, _mm512_mask_shuffle_epi32(x[0][i], 0xAAAA, x[1][i], _MM_PERM_CDAB));
  }
}

using TilesFn = void (*)(PhiloxKey, uint64_t, size_t, uint32_t*);

// MOEKIT_UPCYCLE_KERNELS=avx2|scalar caps the kernels for a whole run (to time or check the
// paths other CPUs take); anything else is an error rather than a silent default.
int initial_cap() {
  const char* env = std::getenv("MOEKIT_UPCYCLE_KERNELS");
  if (env == nullptr || *env == 0) return static_cast<int>(KernelCap::kAvx512);
  const std::string v = env;
  if (v == "avx512") return static_cast<int>(KernelCap::kAvx512);
  if (v == "avx2") return static_cast<int>(KernelCap::kAvx2);
  if (v == "scalar") return static_cast<int>(KernelCap::kScalar);
  MOEKIT_FAIL("MOEKIT_UPCYCLE_KERNELS='", v, "': expected avx512, avx2 or scalar");
}

std::atomic<int> g_cap{-1};  // -1: not read from the environment yet

struct Cpu {
  bool avx512 = false, avx2 = false;
};

const Cpu& cpu() {
  static const Cpu c = [] {
    __builtin_cpu_init();
    Cpu x;
    x.avx512 = __builtin_cpu_supports("avx512f") != 0;
    x.avx2 = __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
    return x;
  }();
  return c;
}

// Read on first use, not at static initialisation, so that a bad value is an ordinary error
// of the command that uses the kernels.
KernelCap cap() {
  int c = g_cap.load(std::memory_order_relaxed);
  if (c < 0) {
    int unset = -1;
    g_cap.compare_exchange_strong(unset, initial_cap());
    c = g_cap.load();
  }
  return static_cast<KernelCap>(c);
}

}  // namespace

PhiloxKey philox_key(uint64_t seed, std::string_view name) {
  // As CounterRng's constructor (core/rng.cpp); test_upcycle_rng checks the two agree.
  const uint64_t h = name_hash(name) ^ (seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
  return {static_cast<uint32_t>(h), static_cast<uint32_t>(h >> 32)};
}

void stream_words(const PhiloxKey& key, uint64_t idx0, size_t n, uint32_t* out) {
  if (n == 0) return;
  const TilesFn fn = detail::avx512_kernels() ? philox_tiles_avx512
                     : detail::avx2_kernels() ? philox_tiles_avx2
                                              : philox_tiles_scalar;
  uint64_t idx = idx0;
  const uint64_t end = idx0 + n;
  alignas(64) uint32_t tile[kTileWords];
  while (idx < end) {
    const uint64_t t = idx / kTileWords, in_tile = idx % kTileWords;
    if (in_tile == 0 && end - idx >= kTileWords) {
      // Whole tiles straight into the output.
      const size_t nt = static_cast<size_t>((end - idx) / kTileWords);
      fn(key, t, nt, out + (idx - idx0));
      idx += nt * kTileWords;
      continue;
    }
    fn(key, t, 1, tile);
    const uint64_t m = std::min<uint64_t>(kTileWords - in_tile, end - idx);
    std::memcpy(out + (idx - idx0), tile + in_tile, m * sizeof(uint32_t));
    idx += m;
  }
}

uint32_t stream_word(const PhiloxKey& key, uint64_t idx) {
  uint32_t w;
  stream_words(key, idx, 1, &w);
  return w;
}

uint64_t ratio_threshold(double ratio) {
  MOEKIT_CHECK(ratio >= 0 && ratio <= 1, "re-init ratio ", ratio, " is outside [0, 1]");
  return static_cast<uint64_t>(std::llround(ratio * 4294967296.0));
}

bool element_reinit(uint64_t seed, std::string_view tensor, uint64_t idx, double ratio) {
  return stream_word(philox_key(seed, tensor), idx) < ratio_threshold(ratio);
}

KernelCap set_kernel_cap(KernelCap c) {
  const KernelCap prev = cap();
  g_cap.store(static_cast<int>(c));
  return prev;
}

bool set_scalar_kernels(bool scalar) {
  return set_kernel_cap(scalar ? KernelCap::kScalar : KernelCap::kAvx512) == KernelCap::kScalar;
}

const char* kernel_level_name() {
  return detail::avx512_kernels() ? "avx512" : detail::avx2_kernels() ? "avx2" : "scalar";
}

namespace detail {
bool avx512_kernels() { return cpu().avx512 && cap() >= KernelCap::kAvx512; }
bool avx2_kernels() { return cpu().avx2 && cap() >= KernelCap::kAvx2; }
}  // namespace detail

}  // namespace moekit::upcycle
