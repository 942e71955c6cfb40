// BLAS-backed products (EIGEN_USE_BLAS here only, in builds with MOEKIT_BLAS) and
// single-threaded strided products (Eigen's own GEMM, in matmul_st_cpu.cpp, which is compiled
// without EIGEN_USE_BLAS). Without BLAS (the GPU bundle) Eigen computes these too.
#ifdef MOEKIT_USE_BLAS
#define EIGEN_USE_BLAS
#endif
#include <Eigen/Core>

#include "kernels/matmul.h"

namespace moekit::kernels {

namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;
using MMap = Eigen::Map<RowMat>;

template <typename Prod>
void assign(MMap& c, const Prod& p, float beta, float alpha) {
  if (beta == 0.f) c.noalias() = alpha * p;
  else {
    if (beta != 1.f) c *= beta;
    c.noalias() += alpha * p;
  }
}
}  // namespace

void matmul_nt(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, float beta, float alpha) {
  if (m == 0 || n == 0) return;
  MMap C(c, m, n);
  CMap A(a, m, k), B(b, n, k);
  assign(C, A * B.transpose(), beta, alpha);
}

void matmul_nn(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, float beta, float alpha) {
  if (m == 0 || n == 0) return;
  MMap C(c, m, n);
  CMap A(a, m, k), B(b, k, n);
  assign(C, A * B, beta, alpha);
}

void matmul_tn(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, float beta, float alpha) {
  if (m == 0 || n == 0) return;
  MMap C(c, m, n);
  CMap A(a, k, m), B(b, k, n);
  assign(C, A.transpose() * B, beta, alpha);
}

}  // namespace moekit::kernels
