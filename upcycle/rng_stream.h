// Element-indexed random streams for the upcycler: every random value written into an output
// tensor (re-initialised expert weights, routers, shared-expert gates) and every element
// re-initialisation decision is a pure function of (seed, output tensor name, element index),
// so the output is byte-identical whatever the thread count or work split.
//
// The generator is moekit's CounterRng (Philox-4x32-10 keyed by (seed, name), core/rng.h),
// evaluated 16 blocks at a time with AVX-512 / AVX2 (integer only, so every code path gives the
// same bits; a unit test checks them against CounterRng::bits). One 32-bit word per element:
//   element i uses word (i mod 64) / 16 of Philox block 16 * (i / 64) + (i mod 16)
// (a 64-element tile is 16 blocks laid out word-major, which is what the SIMD code produces).
//
// One word gives both the re-init decision and the value (rng_stream.cpp / normal_fill.cpp):
//   re-init iff w < thr, thr = round(ratio * 2^32), so P(re-init) = thr / 2^32 exactly;
//   u = min(((w >> s) + 1/2) * 2^s / thr, 1 - 2^-24), s keeping 24 bits of [0, thr)
//       (uniform in (0, 1) given w < thr);
//   z = Phi^-1(u), a piecewise polynomial: one of 29 degree-7 polynomials chosen by the float
//       exponent of min(u, 1 - u) (or of 1/2 - min(u, 1 - u) in the central half), fitted by
//       tests/reference/fit_normal_table.py to 1.6e-7 relative error; |z| <= 5.33.
//   value = fma(std, z, mean).
// Every float step is an IEEE operation (add, mul, min, max, fused multiply-add) in a fixed
// order, with no other contraction (fp-contract is off in normal_fill.cpp), so the AVX-512
// kernels and the scalar reference give the same bits, which the tests check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace moekit::upcycle {

struct PhiloxKey {
  uint32_t k0 = 0, k1 = 0;
};

// The key CounterRng(seed, name) uses (checked against CounterRng by the tests).
PhiloxKey philox_key(uint64_t seed, std::string_view name);

// Words of elements [idx0, idx0 + n) of the stream.
void stream_words(const PhiloxKey& key, uint64_t idx0, size_t n, uint32_t* out);
uint32_t stream_word(const PhiloxKey& key, uint64_t idx);

// Re-init threshold for a ratio in [0, 1]: elements with word < threshold are re-initialised.
// 2^32 (ratio 1) re-initialises everything.
uint64_t ratio_threshold(double ratio);

// The element-mode re-init rule, for tests and analysis: is element `idx` of output tensor
// `tensor` re-initialised with this seed and ratio?
bool element_reinit(uint64_t seed, std::string_view tensor, uint64_t idx, double ratio);

// Scalar reference of the value path: u of a word (w < thr, 0 < thr <= 2^32), and the
// standard normal of a u in (0, 1).
float uniform_from_word(uint32_t w, uint64_t thr);
float normal_from_uniform(float u);
inline float normal_from_word(uint32_t w, uint64_t thr) { return normal_from_uniform(uniform_from_word(w, thr)); }
// z[i] = normal_from_uniform(u[i]) by the active kernel (AVX-512 unless scalar is forced).
void normals_from_uniforms(const float* u, size_t n, float* z);

// y[i] = w[i] < thr ? mean + std * z(w[i]) : src[i], for the stream's elements
// [idx0, idx0 + n). Returns how many were re-initialised. thr = 0: plain copy.
uint64_t reinit_elements(float* y, const float* src, size_t n, const PhiloxKey& key, uint64_t idx0,
                         uint64_t thr, float mean, float std);
// y[i] = mean + std * z(w[i]) with thr = 2^32, for elements [idx0, idx0 + n).
void normal_elements(float* y, size_t n, const PhiloxKey& key, uint64_t idx0, float mean, float std);

// The upcycle kernels use the best instruction set the CPU has (AVX-512F, else AVX2 with FMA,
// else scalar), up to a cap (tests and benchmarks compare the paths; all give the same bits).
enum class KernelCap { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
KernelCap set_kernel_cap(KernelCap cap);  // returns the previous cap; the default is kAvx512
bool set_scalar_kernels(bool scalar);     // cap kScalar or kAvx512; returns whether it was kScalar
// What runs now: "avx512", "avx2" or "scalar" (Philox and the normals use the same level).
const char* kernel_level_name();

namespace detail {
bool avx512_kernels();  // the CPU has AVX-512F and the cap allows it
bool avx2_kernels();    // the CPU has AVX2 and FMA and the cap allows it
}  // namespace detail

}  // namespace moekit::upcycle
