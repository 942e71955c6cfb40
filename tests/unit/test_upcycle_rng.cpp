// Tests of upcycle/rng_stream: the SIMD Philox streams against CounterRng (the independent
// scalar generator of core/rng), the SIMD normal kernels against the scalar reference bit for
// bit, the inverse normal CDF against a double-precision bisection of erfc, and the re-init
// rule's counts and moments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/rng.h"
#include "upcycle/rng_stream.h"

namespace moekit::upcycle {
namespace {

// Element i of the stream per the documented layout, from CounterRng directly.
uint32_t reference_word(const CounterRng& rng, uint64_t i) {
  const uint64_t block = 16 * (i / 64) + (i % 16);
  return rng.bits(block)[(i % 64) / 16];
}

// Restores the kernel choice at scope exit.
struct Cap {
  explicit Cap(KernelCap c) : prev(set_kernel_cap(c)) {}
  ~Cap() { set_kernel_cap(prev); }
  KernelCap prev;
};
// The vector paths the tests compare with the scalar reference (on a CPU without one of them,
// that cap runs the next one down, and the comparison still holds).
constexpr KernelCap kVectorCaps[] = {KernelCap::kAvx512, KernelCap::kAvx2};

double inverse_normal_cdf(double u) {
  double lo = -12, hi = 12;
  for (int it = 0; it < 200; ++it) {
    const double m = (lo + hi) / 2;
    (0.5 * std::erfc(-m / std::sqrt(2.0)) < u ? lo : hi) = m;
  }
  return (lo + hi) / 2;
}

TEST(UpcycleRng, StreamMatchesCounterRngOnEveryPath) {
  for (KernelCap c : {KernelCap::kAvx512, KernelCap::kAvx2, KernelCap::kScalar}) {
    Cap k(c);
    for (const char* name : {"model.layers.0.mlp.experts.3.up_proj.weight", "x"}) {
      const CounterRng rng(99, name);
      const PhiloxKey key = philox_key(99, name);
      // Unaligned starts, tile-crossing lengths, and blocks whose low counter word wraps.
      const uint64_t wrap = (uint64_t{1} << 32) / 16 * 64 - 70;  // block 2^32 - ~1 region
      for (uint64_t idx0 : {uint64_t{0}, uint64_t{5}, uint64_t{63}, uint64_t{1000}, wrap}) {
        std::vector<uint32_t> w(300);
        stream_words(key, idx0, w.size(), w.data());
        for (size_t i = 0; i < w.size(); ++i)
          ASSERT_EQ(w[i], reference_word(rng, idx0 + i)) << name << " idx " << idx0 + i << " " << kernel_level_name();
      }
    }
  }
}

TEST(UpcycleRng, PhiloxPathsAgreeOnLongRuns) {
  const PhiloxKey key = philox_key(3, "long");
  std::vector<uint32_t> ref(100000);
  {
    Cap k(KernelCap::kScalar);
    stream_words(key, 12345, ref.size(), ref.data());
  }
  for (KernelCap c : kVectorCaps) {
    Cap k(c);
    std::vector<uint32_t> a(ref.size());
    stream_words(key, 12345, a.size(), a.data());
    EXPECT_EQ(a, ref) << "kernel " << kernel_level_name();
  }
}

TEST(UpcycleRng, SimdNormalKernelsMatchScalarReferenceBitForBit) {
  const size_t n = 20011;  // not a multiple of 16 or of the 2048-word chunk
  std::vector<float> src(n);
  for (size_t i = 0; i < n; ++i) src[i] = static_cast<float>(i) * 1e-3f - 7.f;
  const PhiloxKey key = philox_key(5, "t");
  for (uint64_t thr : {uint64_t{1}, uint64_t{1000}, (uint64_t{1} << 24) - 1, uint64_t{1} << 31,
                       (uint64_t{1} << 32) - 1, uint64_t{1} << 32}) {
    std::vector<float> b(n);
    uint64_t cb;
    {
      Cap k(KernelCap::kScalar);
      cb = reinit_elements(b.data(), src.data(), n, key, 77, thr, 0.1f, 2.f);
    }
    for (KernelCap c : kVectorCaps) {
      Cap k(c);
      std::vector<float> a(n);
      const uint64_t ca = reinit_elements(a.data(), src.data(), n, key, 77, thr, 0.1f, 2.f);
      EXPECT_EQ(ca, cb) << thr << " " << kernel_level_name();
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float)))
          << "threshold " << thr << " " << kernel_level_name();
    }
  }
  std::vector<float> b(n);
  {
    Cap k(KernelCap::kScalar);
    normal_elements(b.data(), n, key, 3, -1.f, 0.5f);
  }
  for (KernelCap c : kVectorCaps) {
    Cap k(c);
    std::vector<float> a(n);
    normal_elements(a.data(), n, key, 3, -1.f, 0.5f);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float))) << kernel_level_name();
  }
}

TEST(UpcycleRng, InverseNormalCdfIsAccurate) {
  double worst = 0;
  for (int i = 1; i < 20000; ++i) {
    const float u = static_cast<float>(i) / 20000.f;
    const double z = inverse_normal_cdf(u);
    worst = std::max(worst, std::fabs(normal_from_uniform(u) - z) / std::max(1.0, std::fabs(z)));
  }
  EXPECT_LT(worst, 3e-7);
  // Tails down to the smallest u a word can give.
  for (float u : {3e-8f, 1e-7f, 1e-6f, 1e-4f, 0.003f})
    EXPECT_NEAR(normal_from_uniform(u), inverse_normal_cdf(u), 3e-7 * std::fabs(inverse_normal_cdf(u))) << u;
  // Exactly symmetric where 1 - u is exact.
  for (float u : {0.25f, 0.125f, 0.0625f, 0.4375f}) EXPECT_EQ(normal_from_uniform(u), -normal_from_uniform(1.f - u)) << u;
  EXPECT_EQ(normal_from_uniform(0.5f), 0.f);
}

// Every segment of the piecewise inverse CDF, on both sides of 1/2: u = 2^-25 .. 1/2 (and
// 1 - u where float has it) and 1/2 -+ 2^-26 .. 1/4 in geometric steps (each binade of r and
// of s = 1/2 - r), every kernel bit for bit, and the relative error against the
// double-precision inverse.
TEST(UpcycleRng, NormalSegmentsAccurateAndIdenticalOnEveryKernel) {
  std::vector<float> u;
  for (double r = std::ldexp(1.0, -25); r < 0.5; r *= 1.0007) {
    u.push_back(static_cast<float>(r));
    if (r >= std::ldexp(1.0, -24)) u.push_back(1.f - static_cast<float>(r));  // else it rounds to 1
  }
  for (double s = std::ldexp(1.0, -26); s < 0.25; s *= 1.0007) {
    u.push_back(0.5f - static_cast<float>(s));
    u.push_back(0.5f + static_cast<float>(s));
  }
  u.insert(u.end(), {0.5f, 0.25f, 0.75f, 0.015625f, 0.484375f, 0.515625f, 0.99999994f});
  std::vector<float> scalar(u.size());
  {
    Cap k(KernelCap::kScalar);
    normals_from_uniforms(u.data(), u.size(), scalar.data());
  }
  for (KernelCap c : kVectorCaps) {
    Cap k(c);
    std::vector<float> simd(u.size());
    normals_from_uniforms(u.data(), u.size(), simd.data());
    for (size_t i = 0; i < u.size(); ++i) ASSERT_EQ(simd[i], scalar[i]) << "u = " << u[i] << " " << kernel_level_name();
  }
  double worst = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    if (u[i] == 0.5f) {  // small s above 1/2 rounds to 1/2 in float
      ASSERT_EQ(scalar[i], 0.f);
      continue;
    }
    const double z = inverse_normal_cdf(u[i]);
    worst = std::max(worst, std::fabs(scalar[i] - z) / std::fabs(z));
    ASSERT_EQ(std::signbit(scalar[i]), u[i] < 0.5f) << u[i];
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_GT(u.size(), 40000u);
}

TEST(UpcycleRng, UniformIsStrictlyInsideTheUnitInterval) {
  for (uint64_t thr : {uint64_t{1}, uint64_t{7}, uint64_t{1} << 20, uint64_t{1} << 31, (uint64_t{1} << 32) - 1,
                       uint64_t{1} << 32}) {
    const float lo = uniform_from_word(0, thr), hi = uniform_from_word(static_cast<uint32_t>(thr - 1), thr);
    EXPECT_GT(lo, 0.f) << thr;
    EXPECT_LT(hi, 1.f) << thr;
    EXPECT_LT(lo, hi + (thr == 1 ? 1.f : 0.f)) << thr;
    EXPECT_TRUE(std::isfinite(normal_from_word(0, thr)) && std::isfinite(normal_from_word(static_cast<uint32_t>(thr - 1), thr)));
  }
  EXPECT_THROW(uniform_from_word(0, 0), Error);
}

TEST(UpcycleRng, NormalMoments) {
  const size_t n = 1 << 20;
  std::vector<float> z(n);
  normal_elements(z.data(), n, philox_key(8, "moments"), 0, 0.f, 1.f);
  double s = 0, s2 = 0, s4 = 0;
  size_t beyond2 = 0;
  for (float v : z) {
    s += v;
    s2 += static_cast<double>(v) * v;
    s4 += static_cast<double>(v) * v * v * v;
    beyond2 += std::fabs(v) > 2.f;
  }
  const double mean = s / n, var = s2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 5.0 / std::sqrt(static_cast<double>(n)));
  EXPECT_NEAR(var, 1.0, 0.01);
  EXPECT_NEAR(s4 / n, 3.0, 0.05);  // kurtosis of a normal
  EXPECT_NEAR(static_cast<double>(beyond2) / n, 0.0455, 0.002);
}

TEST(UpcycleRng, ReinitCountAndRuleAgree) {
  const size_t n = 200000;
  const double ratio = 0.3;
  std::vector<float> src(n, 123.f), y(n);
  const char* name = "model.layers.1.mlp.experts.0.gate_proj.weight";
  const uint64_t count = reinit_elements(y.data(), src.data(), n, philox_key(4, name), 0, ratio_threshold(ratio), 0.f, 1.f);
  const double sigma = std::sqrt(ratio * (1 - ratio) / n);
  EXPECT_NEAR(static_cast<double>(count) / n, ratio, 5 * sigma);
  size_t changed = 0;
  for (size_t i = 0; i < n; i += 97) {
    const bool hit = element_reinit(4, name, i, ratio);
    EXPECT_EQ(hit, y[i] != 123.f) << i;
    changed += hit;
  }
  EXPECT_GT(changed, 0u);
}

TEST(UpcycleRng, ThresholdEdges) {
  EXPECT_EQ(ratio_threshold(0.0), 0u);
  EXPECT_EQ(ratio_threshold(0.5), uint64_t{1} << 31);
  EXPECT_EQ(ratio_threshold(1.0), uint64_t{1} << 32);
  EXPECT_THROW(ratio_threshold(1.5), Error);
  EXPECT_THROW(ratio_threshold(-0.1), Error);
  std::vector<float> src = {1, 2, 3}, y(3);
  EXPECT_EQ(reinit_elements(y.data(), src.data(), 3, philox_key(1, "a"), 0, 0, 0.f, 1.f), 0u);
  EXPECT_EQ(y, src);
  EXPECT_EQ(reinit_elements(y.data(), src.data(), 3, philox_key(1, "a"), 0, uint64_t{1} << 32, 0.f, 1.f), 3u);
  EXPECT_NE(y, src);
  // Same element, same value whatever the slab it is computed in.
  std::vector<float> whole(100), part(40);
  normal_elements(whole.data(), 100, philox_key(1, "s"), 0, 0.f, 1.f);
  normal_elements(part.data(), 40, philox_key(1, "s"), 37, 0.f, 1.f);
  EXPECT_EQ(0, std::memcmp(part.data(), whole.data() + 37, 40 * sizeof(float)));
}

}  // namespace
}  // namespace moekit::upcycle
