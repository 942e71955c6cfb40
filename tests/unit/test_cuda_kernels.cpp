// GPU kernels against their CPU twins. Skips cleanly without CUDA or without a device.
#include <gtest/gtest.h>

#include "core/device.h"
#include "kernels/rmsnorm.h"
#include "kernels/swiglu.h"
#include "test_util.h"

#ifdef MOEKIT_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/kernels_cuda.h"
#endif

namespace moekit {
namespace {

#ifdef MOEKIT_WITH_CUDA
struct DeviceVec {
  float* p = nullptr;
  size_t n = 0;
  explicit DeviceVec(const std::vector<float>& h) : n(h.size()) {
    EXPECT_EQ(cudaMalloc(&p, n * sizeof(float)), cudaSuccess);
    cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  }
  explicit DeviceVec(size_t count) : n(count) { EXPECT_EQ(cudaMalloc(&p, n * sizeof(float)), cudaSuccess); }
  ~DeviceVec() { cudaFree(p); }
  std::vector<float> host() const {
    std::vector<float> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost);
    return h;
  }
};
#endif

#define MOEKIT_REQUIRE_GPU()                                                         \
  do {                                                                               \
    if (!built_with_cuda()) GTEST_SKIP() << "built without CUDA (MOEKIT_CUDA=OFF)"; \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";                  \
  } while (0)

TEST(CudaKernels, RmsNormMatchesCpu) {
  MOEKIT_REQUIRE_GPU();
#ifdef MOEKIT_WITH_CUDA
  const int64_t T = 37, D = 1000;
  auto x = test::randn(T * D, 1, "x"), w = test::randn(D, 1, "w", 0.1f, 1.f);
  std::vector<float> y(T * D), r(T);
  kernels::rmsnorm_forward(y.data(), r.data(), x.data(), w.data(), T, D, 1e-6f);
  DeviceVec dx(x), dw(w), dy(T * D), dr(T);
  kernels::rmsnorm_forward_cuda(dy.p, dr.p, dx.p, dw.p, T, D, 1e-6f, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_LT(test::rel_err(dy.host().data(), y.data(), y.size()), 1e-6);
  EXPECT_LT(test::rel_err(dr.host().data(), r.data(), r.size()), 1e-6);
#endif
}

TEST(CudaKernels, SwiGluMatchesCpu) {
  MOEKIT_REQUIRE_GPU();
#ifdef MOEKIT_WITH_CUDA
  const int64_t T = 19, W = 333;
  auto gu = test::randn(T * 2 * W, 2, "gu"), dh = test::randn(T * W, 2, "dh");
  std::vector<float> h(T * W), dgu(T * 2 * W);
  kernels::swiglu_forward(h.data(), gu.data(), T, W);
  kernels::swiglu_backward(dgu.data(), dh.data(), gu.data(), T, W);
  DeviceVec d_gu(gu), d_dh(dh), d_h(T * W), d_dgu(T * 2 * W);
  kernels::swiglu_forward_cuda(d_h.p, d_gu.p, T, W, nullptr);
  kernels::swiglu_backward_cuda(d_dgu.p, d_dh.p, d_gu.p, T, W, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_LT(test::rel_err(d_h.host().data(), h.data(), h.size()), 1e-6);
  EXPECT_LT(test::rel_err(d_dgu.host().data(), dgu.data(), dgu.size()), 1e-6);
#endif
}

}  // namespace
}  // namespace moekit
