// Helpers for the GPU tests: skip cleanly without CUDA or a device, move f32 host data to and from
// device arrays of either activation type, and poison outputs so unwritten elements fail.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/half.h"
#include "../unit/test_util.h"

#ifdef MOEKIT_WITH_CUDA
#include "core/cuda_util.h"
#endif

#define MOEKIT_REQUIRE_GPU()                                                         \
  do {                                                                               \
    if (!::moekit::built_with_cuda()) GTEST_SKIP() << "built without CUDA (MOEKIT_CUDA=OFF)"; \
    if (::moekit::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";         \
  } while (0)

#ifdef MOEKIT_WITH_CUDA
namespace moekit::test {

template <typename T>
constexpr DType dtype_of() {
  return std::is_same_v<T, float> ? DType::kF32 : DType::kBF16;
}

// Host f32 values in the device type T (bf16 rounds to nearest even, core/dtype.h).
template <typename T>
std::vector<T> host_as(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  from_f32(out.data(), dtype_of<T>(), v.data(), v.size());
  return out;
}

// Values of type T widened to f32.
template <typename T>
std::vector<float> widen(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  to_f32(out.data(), v.data(), dtype_of<T>(), v.size());
  return out;
}

// What the device sees: v rounded to T and widened back (the CPU reference runs on these values).
template <typename T>
std::vector<float> rounded(const std::vector<float>& v) {
  return widen(host_as<T>(v));
}

template <typename T>
cuda::DeviceArray<T> to_device(const std::vector<float>& v) {
  return cuda::DeviceArray<T>(host_as<T>(v));
}

template <typename T>
std::vector<float> to_host(const cuda::DeviceArray<T>& d) {
  return widen(d.download());
}

// An output array filled with NaN bytes: any element a kernel fails to write stays NaN.
template <typename T>
cuda::DeviceArray<T> poisoned(size_t n) {
  cuda::DeviceArray<T> d(n);
  d.fill_bytes(0xff);
  return d;
}

// rel_err (test_util.h) that also fails on any non-finite element of a: poisoned (NaN) outputs
// must not slip through max() comparisons.
inline double strict_rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  for (float x : a)
    if (!std::isfinite(x)) return INFINITY;
  return rel_err(a.data(), b.data(), a.size());
}

// Tolerance of a comparison against the f32 CPU op: tight for f32, bf16's 8-bit mantissa else.
template <typename T>
constexpr double tol(double f32_tol) {
  return std::is_same_v<T, float> ? f32_tol : 2e-2;
}

}  // namespace moekit::test
#endif
