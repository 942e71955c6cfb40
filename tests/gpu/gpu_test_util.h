// Helpers for the GPU tests: skip cleanly without CUDA or a device, and tensors mirrored on the
// CPU backend (the reference) and a CUDA backend, so that every op runs on both from the same
// values and is compared element by element (ggml's test-backend-ops idea).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "../unit/test_util.h"
#include "backend/backend.h"
#include "core/device.h"
#include "core/dtype.h"

#define MOEKIT_REQUIRE_GPU()                                                                   \
  do {                                                                                         \
    if (!::moekit::built_with_cuda()) GTEST_SKIP() << "built without CUDA (MOEKIT_CUDA=OFF)"; \
    if (::moekit::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";                  \
  } while (0)

namespace moekit::test {

// The CPU reference and a CUDA backend computing in `act`.
struct Backends {
  explicit Backends(DType act) : act(act), gpu(backend::make_cuda(0, act)) {}
  DType act;
  backend::Backend& cpu = backend::cpu();
  std::unique_ptr<backend::Backend> gpu;
};

// Host f32 values as the GPU's activations hold them (rounded to nearest even in bf16).
inline std::vector<float> rounded(const std::vector<float>& v, DType act) {
  if (act == DType::kF32) return v;
  std::vector<uint16_t> h(v.size());
  from_f32(h.data(), act, v.data(), v.size());
  std::vector<float> out(v.size());
  to_f32(out.data(), h.data(), act, v.size());
  return out;
}

// One f32-valued tensor on both backends. `typed`: the GPU stores it in the activation type (the
// CPU copy then holds the same values, rounded); otherwise f32 on both.
class Mirror {
 public:
  Mirror(Backends& b, const std::vector<float>& v, bool typed)
      : b_(b), n_(v.size()), dt_(typed ? b.act : DType::kF32), cpu_(b.cpu, v.size() * 4),
        gpu_(*b.gpu, v.size() * dtype_size(dt_) + 4) {
    set(v);
  }
  // n elements of NaN on both: an element an op fails to write stays NaN and fails the test.
  static Mirror poisoned(Backends& b, size_t n, bool typed) {
    return Mirror(b, std::vector<float>(n, std::nanf("")), typed);
  }
  void set(const std::vector<float>& v) {
    const std::vector<float> r = dt_ == DType::kF32 ? v : rounded(v, dt_);
    std::memcpy(cpu_.data(), r.data(), n_ * 4);
    std::vector<uint8_t> raw(n_ * dtype_size(dt_));
    from_f32(raw.data(), dt_, v.data(), n_);
    b_.gpu->upload(gpu_.data(), raw.data(), raw.size());
  }
  float* cpu() { return cpu_.as<float>(); }
  void* gpu() { return gpu_.data(); }
  float* gpu_f32() { return gpu_.as<float>(); }  // only for f32 tensors
  std::vector<float> cpu_values() const { return std::vector<float>(cpu_.as<float>(), cpu_.as<float>() + n_); }
  std::vector<float> gpu_values() const {
    std::vector<uint8_t> raw(n_ * dtype_size(dt_));
    b_.gpu->download(raw.data(), gpu_.data(), raw.size());
    std::vector<float> out(n_);
    to_f32(out.data(), raw.data(), dt_, n_);
    return out;
  }
  size_t size() const { return n_; }

 private:
  Backends& b_;
  size_t n_;
  DType dt_;
  backend::Buffer cpu_, gpu_;
};

// Integer tensors (ids, expert indices, row maps) on both backends.
template <typename I>
class MirrorInt {
 public:
  MirrorInt(Backends& b, const std::vector<I>& v) : b_(b), n_(v.size()), cpu_(v), gpu_(*b.gpu, v.size() * sizeof(I) + 8) {
    b.gpu->upload(gpu_.data(), v.data(), v.size() * sizeof(I));
  }
  I* cpu() { return cpu_.data(); }
  I* gpu() { return gpu_.as<I>(); }
  std::vector<I> gpu_values() const {
    std::vector<I> out(n_);
    b_.gpu->download(out.data(), gpu_.data(), n_ * sizeof(I));
    return out;
  }
  const std::vector<I>& cpu_values() const { return cpu_; }

 private:
  Backends& b_;
  size_t n_;
  std::vector<I> cpu_;
  backend::Buffer gpu_;
};

// rel_err (test_util.h) that also fails on any non-finite element of a: poisoned (NaN) outputs
// must not slip through max() comparisons.
inline double strict_rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  for (float x : a)
    if (!std::isfinite(x)) return INFINITY;
  return rel_err(a.data(), b.data(), a.size());
}

// GPU against CPU for one mirrored tensor.
inline double mirror_err(const Mirror& m) { return strict_rel_err(m.gpu_values(), m.cpu_values()); }

// Tolerance of a comparison against the f32 CPU op: tight for f32, bf16's 8-bit mantissa else.
inline double tol(DType act, double f32_tol) { return act == DType::kF32 ? f32_tol : 2e-2; }

}  // namespace moekit::test
