// GEMMs on the GPU through cuBLAS, in the row-major forms of kernels/matmul.h:
//   kNT  C[M,N] = alpha * A[M,K] B[N,K]^T + beta * C    (y = x W^T)
//   kNN  C[M,N] = alpha * A[M,K] B[K,N]   + beta * C    (dx = dy W)
//   kTN  C[M,N] = alpha * A[K,M]^T B[K,N] + beta * C    (dW = dy^T x)
// A and B share one element type (f32 or bf16); C is f32 or bf16; accumulation is always f32
// (CUBLAS_COMPUTE_32F: IEEE f32 for f32 inputs, tensor cores for bf16). Row strides lda/ldb/ldc
// default to the dense ones (0).
//
// Grouped form for the routed experts: one problem per expert over its contiguous rows, all in
// one cublasGemmGroupedBatchedEx call (the expert row counts are on the host: the dispatcher
// copies them there once per layer). cuBLAS' grouped GEMM has no bf16 -> f32 mode, so weight
// gradients, which must accumulate in f32, are issued as one cublasGemmEx per expert on the
// stream, with no synchronisation in between.
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include <cstdint>
#include <vector>

#include "core/cuda_util.h"
#include "core/dtype.h"

namespace moekit::kernels {

enum class GemmOp { kNT, kNN, kTN };

struct GemmArgs {
  GemmOp op = GemmOp::kNT;
  int64_t m = 0, n = 0, k = 0;
  DType ab = DType::kF32;  // type of A and B: kF32 or kBF16
  DType c = DType::kF32;   // type of C: kF32 or kBF16
  float alpha = 1.f, beta = 0.f;
  int64_t lda = 0, ldb = 0, ldc = 0;  // row strides in elements; 0: dense
};

void gemm_cuda(const cuda::Context& ctx, const GemmArgs& g, void* c, const void* a, const void* b);

// `count` problems of one shape at constant strides (elements) between consecutive A, B and C
// (cublasGemmStridedBatchedEx): the per-head products of attention.
void strided_batched_gemm_cuda(const cuda::Context& ctx, const GemmArgs& g, int64_t count, void* c, int64_t stride_c,
                               const void* a, int64_t stride_a, const void* b, int64_t stride_b);

// One problem per expert e with rows[e] > 0 (host array of `count` entries):
//   kNT: C_e[rows_e, n] = A_e[rows_e, k] B_e[n, k]^T      (expert forward, m = rows)
//   kNN: C_e[rows_e, n] = A_e[rows_e, k] B_e[k, n]        (expert input gradient)
// A_e and C_e are consecutive row blocks of a and c (the dispatched buffer); B_e = b + e *
// b_stride elements (the expert's weight in the stack). C is overwritten (beta = 0).
struct GroupedGemm {
  // Device-side pointer arrays, reused across calls (grown as needed).
  cuda::DeviceArray<const void*> w_ptrs, x_ptrs;  // B_e (weights), A_e (rows)
  cuda::DeviceArray<void*> y_ptrs;                 // C_e
};
void grouped_gemm_cuda(const cuda::Context& ctx, GroupedGemm* scratch, GemmOp op, DType ab_c, const int64_t* rows,
                       int64_t count, int64_t n, int64_t k, void* c, const void* a, const void* b, int64_t b_stride);

// Weight gradients of the experts, accumulated in f32:
//   dW_e[m, n] += dY_e[rows_e, m]^T X_e[rows_e, n]   for every expert with rows_e > 0,
// dY_e and X_e consecutive row blocks of dy (row stride m) and x (row stride n), of type ab;
// dW_e = dw + e * dw_stride (f32).
void grouped_weight_grad_cuda(const cuda::Context& ctx, DType ab, const int64_t* rows, int64_t count, int64_t m,
                              int64_t n, float* dw, int64_t dw_stride, const void* dy, const void* x);

}  // namespace moekit::kernels
#endif
