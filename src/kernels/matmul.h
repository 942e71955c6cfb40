// Dense f32 GEMMs on row-major matrices, the three forms a linear layer and its backward need.
// C = alpha * op(A) op(B) + beta * C. Products go through Eigen, which hands them to the
// system BLAS (OpenBLAS) in matmul_cpu.cpp; `ld*` are row strides (elements) so callers can
// address a head inside an interleaved (T, H, d) buffer without copying.
#pragma once

#include <cstdint>

namespace moekit::kernels {

// C[M,N] = A[M,K] * B[N,K]^T   (y = x W^T)
void matmul_nt(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
               float beta = 0.f, float alpha = 1.f);
// C[M,N] = A[M,K] * B[K,N]     (dx = dy W)
void matmul_nn(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
               float beta = 0.f, float alpha = 1.f);
// C[M,N] = A[K,M]^T * B[K,N]   (dW = dy^T x)
void matmul_tn(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
               float beta = 0.f, float alpha = 1.f);

// Strided variants (row strides lda, ldb, ldc) computed by Eigen's own kernels on the calling
// thread: used inside OpenMP loops (attention heads), where BLAS threads would oversubscribe.
void matmul_nt_st(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                  int64_t m, int64_t n, int64_t k, float beta, float alpha);
void matmul_nn_st(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                  int64_t m, int64_t n, int64_t k, float beta, float alpha);
void matmul_tn_st(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                  int64_t m, int64_t n, int64_t k, float beta, float alpha);

}  // namespace moekit::kernels
