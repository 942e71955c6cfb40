// Core: bf16/fp16 conversion against known bit patterns, the counter RNG, CHECK messages.
#include <gtest/gtest.h>

#include <cstring>
#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "core/crc32c.h"
#include "core/dtype.h"
#include "core/half.h"
#include "core/rng.h"

namespace moekit {
namespace {

float f(uint32_t bits) { return bits_f32(bits); }

TEST(Half, Bf16KnownPatterns) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(3.140625f), 0x4049);  // exactly representable
  // pi = 0x40490fdb: dropped half 0x0fdb < 0x8000 -> round down
  EXPECT_EQ(f32_to_bf16(f(0x40490fdb)), 0x4049);
  // Ties to even: 0x3f808000 is halfway between 0x3f80 and 0x3f81 -> even 0x3f80
  EXPECT_EQ(f32_to_bf16(f(0x3f808000)), 0x3f80);
  // 0x3f818000 is halfway between 0x3f81 and 0x3f82 -> even 0x3f82
  EXPECT_EQ(f32_to_bf16(f(0x3f818000)), 0x3f82);
  // Just above halfway rounds up
  EXPECT_EQ(f32_to_bf16(f(0x3f808001)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  // Largest finite f32 rounds to inf in bf16
  EXPECT_EQ(f32_to_bf16(f(0x7f7fffff)), 0x7f80);
  // NaN with payload only in low bits stays NaN (not inf)
  uint16_t nan = f32_to_bf16(f(0x7f800001));
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x007f, 0);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xc049), -3.140625f);
}

TEST(Half, Fp16KnownPatterns) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);               // max finite
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);               // below the halfway point
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);               // tie -> even -> inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // min normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // min subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie with 0 -> even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);  // above the tie
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp -> tie -> even (2)
  EXPECT_EQ(f32_to_f16(0.1f), 0x2e66);                   // 0.0999755859375
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10 -> even (1.0)
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x8000), -0.0f);
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
}

TEST(Half, Fp16RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;  // inf/NaN
    EXPECT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(Dtype, NamesAndConversion) {
  DType t;
  ASSERT_TRUE(dtype_from_name("BF16", &t));
  EXPECT_EQ(t, DType::kBF16);
  EXPECT_FALSE(dtype_from_name("F8_E4M3", &t));
  EXPECT_EQ(dtype_parse("fp32"), DType::kF32);
  EXPECT_THROW(dtype_parse("int3"), Error);
  std::vector<float> src = {1.0f, -0.5f, 3.0e-3f};
  std::vector<uint16_t> bf(3);
  std::vector<float> back(3);
  from_f32(bf.data(), DType::kBF16, src.data(), 3);
  to_f32(back.data(), bf.data(), DType::kBF16, 3);
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -0.5f);
  EXPECT_NEAR(back[2], 3.0e-3f, 3.0e-3f / 128);
}

// The streaming converter gives from_f32's bytes for every kind of value (ties to even, values
// that round up into the exponent, infinities, NaNs whose payload is only in the low bits,
// denormals), whatever the destination's alignment and the length.
TEST(Dtype, StreamingConversionMatchesFromF32) {
  std::vector<float> src;
  const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu, 0x7f800000u, 0xff800000u,
                              0x7f800001u, 0xffc00001u, 0x00000001u, 0x80008000u, 0x00000000u, 0x80000000u};
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < 4099; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift: arbitrary bit patterns
    const uint32_t bits = i % 5 == 0 ? special[(i / 5) % 12] : static_cast<uint32_t>(x);
    float f;
    std::memcpy(&f, &bits, 4);
    src.push_back(f);
  }
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32})
    for (size_t shift : {0, 1, 7, 31})
      for (size_t n : {size_t{0}, size_t{5}, size_t{33}, size_t{1000}, src.size()}) {
        const size_t es = dtype_size(t);
        alignas(64) static uint8_t a[4200 * 4 + 256], b[4200 * 4 + 256];
        std::memset(a, 0xAB, sizeof(a));
        std::memset(b, 0xAB, sizeof(b));
        from_f32(a + shift * es, t, src.data(), n);
        from_f32_streaming(b + shift * es, t, src.data(), n);
        ASSERT_EQ(0, std::memcmp(a, b, sizeof(a))) << dtype_name(t) << " shift " << shift << " n " << n;
      }
}

TEST(Rng, PhiloxKnownAnswer) {
  // Random123 known-answer test vectors for Philox4x32-10.
  Philox4 zero = philox4x32({0, 0, 0, 0}, 0, 0);
  EXPECT_EQ(zero[0], 0x6627e8d5u);
  EXPECT_EQ(zero[1], 0xe169c58du);
  EXPECT_EQ(zero[2], 0xbc57ac4cu);
  EXPECT_EQ(zero[3], 0x9b00dbd8u);
  Philox4 ones = philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(ones[0], 0x408f276du);
  EXPECT_EQ(ones[1], 0x41c83b0eu);
  EXPECT_EQ(ones[2], 0xa20bc7c6u);
  EXPECT_EQ(ones[3], 0x6d5451fdu);
}

TEST(Rng, SameValuesWhateverTheThreadCount) {
  CounterRng rng(42, "model.layers.0.mlp.gate.weight");
  const size_t n = 100000;
  std::vector<float> serial(n), parallel(n), offset(n / 2);
  rng.fill_normal(serial.data(), n, 0.f, 0.02f);
#pragma omp parallel for num_threads(4) schedule(dynamic, 97)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) parallel[i] = 0.02f * rng.normal(i);
  EXPECT_EQ(serial, parallel);
  // A shard starting at element n/2 (another rank's slice) sees the same values.
  rng.fill_normal(offset.data(), n / 2, 0.f, 0.02f, n / 2);
  EXPECT_TRUE(std::equal(offset.begin(), offset.end(), serial.begin() + n / 2));
  // Statistics of the normal stream.
  double mean = 0, var = 0;
  for (float v : serial) mean += v;
  mean /= n;
  for (float v : serial) var += (v - mean) * (v - mean);
  var /= n;
  EXPECT_NEAR(mean, 0.0, 0.02 * 0.02);
  EXPECT_NEAR(std::sqrt(var), 0.02, 0.02 * 0.01);
  // Different names and seeds give different streams.
  EXPECT_NE(CounterRng(42, "a").normal(0), CounterRng(42, "b").normal(0));
  EXPECT_NE(CounterRng(1, "a").normal(0), CounterRng(2, "a").normal(0));
}

TEST(Rng, UniformInOpenInterval) {
  CounterRng rng(7, "u");
  double sum = 0;
  for (uint64_t i = 0; i < 50000; ++i) {
    float u = rng.uniform(i);
    ASSERT_GT(u, 0.f);
    ASSERT_LT(u, 1.f);
    sum += u;
  }
  EXPECT_NEAR(sum / 50000, 0.5, 0.01);
}

// CRC-32C: the standard check value (RFC 3720 / iSCSI: "123456789" -> 0xE3069283), and the
// SSE4.2 path equal to the bytewise table for every length 0-100 at every alignment 0-7, and
// when continued over two buffers.
TEST(Crc32c, KnownAnswerAndBothPathsAgree) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c_bytewise("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  std::vector<uint8_t> buf(128);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 37 + 11);
  for (size_t off = 0; off < 8; ++off)
    for (size_t n = 0; n + off <= 100; ++n) {
      const uint32_t want = crc32c_bytewise(buf.data() + off, n);
      ASSERT_EQ(crc32c(buf.data() + off, n), want) << "offset " << off << " length " << n;
      ASSERT_EQ(crc32c(buf.data() + off + n / 3, n - n / 3, crc32c(buf.data() + off, n / 3)), want);
    }
}

TEST(Check, MessageNamesLocationAndContext) {
  try {
    int hidden = 30;
    MOEKIT_CHECK(hidden % 4 == 0, "hidden_size ", hidden, " is not divisible by num_attention_heads 4");
    FAIL() << "no throw";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("hidden_size 30 is not divisible"), std::string::npos) << m;
    EXPECT_NE(m.find("test_core.cpp:"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace moekit
