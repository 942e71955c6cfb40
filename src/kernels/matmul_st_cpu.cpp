// Strided single-threaded products with Eigen's built-in GEMM (no BLAS, no threads): safe to
// call from inside OpenMP parallel loops.
#include <Eigen/Core>

#include "kernels/matmul.h"

namespace moekit::kernels {

namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using CMap = Eigen::Map<const RowMat, 0, Stride>;
using MMap = Eigen::Map<RowMat, 0, Stride>;

template <typename Prod>
void assign(MMap& c, const Prod& p, float beta, float alpha) {
  if (beta == 0.f) c.noalias() = alpha * p;
  else {
    if (beta != 1.f) c *= beta;
    c.noalias() += alpha * p;
  }
}
}  // namespace

void matmul_nt_st(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                  int64_t m, int64_t n, int64_t k, float beta, float alpha) {
  if (m == 0 || n == 0) return;
  MMap C(c, m, n, Stride(ldc));
  CMap A(a, m, k, Stride(lda)), B(b, n, k, Stride(ldb));
  assign(C, A * B.transpose(), beta, alpha);
}

void matmul_nn_st(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                  int64_t m, int64_t n, int64_t k, float beta, float alpha) {
  if (m == 0 || n == 0) return;
  MMap C(c, m, n, Stride(ldc));
  CMap A(a, m, k, Stride(lda)), B(b, k, n, Stride(ldb));
  assign(C, A * B, beta, alpha);
}

void matmul_tn_st(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                  int64_t m, int64_t n, int64_t k, float beta, float alpha) {
  if (m == 0 || n == 0) return;
  MMap C(c, m, n, Stride(ldc));
  CMap A(a, k, m, Stride(lda)), B(b, k, n, Stride(ldb));
  assign(C, A.transpose() * B, beta, alpha);
}

}  // namespace moekit::kernels
