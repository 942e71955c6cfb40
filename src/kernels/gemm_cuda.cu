// cuBLAS calls behind gemm_cuda.h. cuBLAS is column-major: a row-major (R, C) matrix is the
// column-major (C, R) matrix with the same bytes, so each row-major product C = op(A) op(B)
// is issued as the column-major product C^T = op(B)^T op(A)^T, i.e. with A and B swapped.
#include "kernels/gemm_cuda.h"

#include <algorithm>

namespace moekit::kernels {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    default: break;
  }
  MOEKIT_FAIL("GEMM: element type ", dtype_name(t), " is not supported (f32 or bf16)");
}

// The column-major call for one row-major problem.
struct ColMajor {
  cublasOperation_t ta, tb;  // applied to the first (row-major B) and second (row-major A) operand
  int64_t m, n, k;           // column-major sizes: m = N, n = M
  int64_t ld_first, ld_second, ldc;
};

ColMajor col_major(GemmOp op, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  switch (op) {
    case GemmOp::kNT:  // C^T (N,M) = B (N,K) . A^T (K,M); B is stored as col-major (K,N): transpose it
      return {CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, ldb ? ldb : K, lda ? lda : K, ldc ? ldc : N};
    case GemmOp::kNN:  // C^T = B^T (N,K) . A^T (K,M); both stored that way
      return {CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, ldb ? ldb : N, lda ? lda : K, ldc ? ldc : N};
    case GemmOp::kTN:  // C^T = B^T (N,K) . A (K,M); A is stored as col-major (M,K): transpose it
      return {CUBLAS_OP_N, CUBLAS_OP_T, N, M, K, ldb ? ldb : N, lda ? lda : M, ldc ? ldc : N};
  }
  MOEKIT_FAIL("GEMM: unknown op");
}

int checked_int(int64_t v, const char* what) {
  MOEKIT_CHECK(v >= 0 && v <= INT32_MAX, "GEMM: ", what, " = ", v, " does not fit cuBLAS' 32-bit sizes");
  return static_cast<int>(v);
}

}  // namespace

void gemm_cuda(const cuda::Context& ctx, const GemmArgs& g, void* c, const void* a, const void* b) {
  if (g.m == 0 || g.n == 0) return;
  MOEKIT_CHECK(g.ab == DType::kF32 || g.ab == DType::kBF16, "GEMM: inputs must be f32 or bf16, got ", dtype_name(g.ab));
  MOEKIT_CHECK(g.ab == DType::kBF16 || g.c == DType::kF32, "GEMM: f32 inputs need an f32 output");
  const ColMajor cm = col_major(g.op, g.m, g.n, g.k, g.lda, g.ldb, g.ldc);
  MOEKIT_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), cm.ta, cm.tb, checked_int(cm.m, "m"), checked_int(cm.n, "n"),
                                   checked_int(cm.k, "k"), &g.alpha, b, cuda_type(g.ab), checked_int(cm.ld_first, "ld"),
                                   a, cuda_type(g.ab), checked_int(cm.ld_second, "ld"), &g.beta, c, cuda_type(g.c),
                                   checked_int(cm.ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void strided_batched_gemm_cuda(const cuda::Context& ctx, const GemmArgs& g, int64_t count, void* c, int64_t stride_c,
                               const void* a, int64_t stride_a, const void* b, int64_t stride_b) {
  if (g.m == 0 || g.n == 0 || count == 0) return;
  MOEKIT_CHECK(g.ab == DType::kF32 || g.ab == DType::kBF16, "GEMM: inputs must be f32 or bf16, got ", dtype_name(g.ab));
  MOEKIT_CHECK(g.ab == DType::kBF16 || g.c == DType::kF32, "GEMM: f32 inputs need an f32 output");
  const ColMajor cm = col_major(g.op, g.m, g.n, g.k, g.lda, g.ldb, g.ldc);
  MOEKIT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      ctx.cublas(), cm.ta, cm.tb, checked_int(cm.m, "m"), checked_int(cm.n, "n"), checked_int(cm.k, "k"), &g.alpha, b,
      cuda_type(g.ab), checked_int(cm.ld_first, "ld"), stride_b, a, cuda_type(g.ab), checked_int(cm.ld_second, "ld"),
      stride_a, &g.beta, c, cuda_type(g.c), checked_int(cm.ldc, "ldc"), stride_c, checked_int(count, "batch count"),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void grouped_gemm_cuda(const cuda::Context& ctx, GroupedGemm* scratch, GemmOp op, DType ab_c, const int64_t* rows,
                       int64_t count, int64_t n, int64_t k, void* c, const void* a, const void* b, int64_t b_stride) {
  MOEKIT_CHECK(op == GemmOp::kNT || op == GemmOp::kNN, "grouped GEMM: only the NT and NN forms are grouped");
  const size_t es = dtype_size(ab_c);
  std::vector<const void*> pa, pb;
  std::vector<void*> pc;
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> m_, n_, k_, lda, ldb, ldc, size;
  int64_t row = 0;
  for (int64_t e = 0; e < count; ++e) {
    const int64_t r = rows[e];
    MOEKIT_CHECK(r >= 0, "grouped GEMM: expert ", e, " has ", r, " rows");
    if (r > 0) {
      const ColMajor cm = col_major(op, r, n, k, 0, 0, 0);
      pa.push_back(static_cast<const char*>(a) + row * k * es);
      pb.push_back(static_cast<const char*>(b) + e * b_stride * es);
      pc.push_back(static_cast<char*>(c) + row * n * es);
      ta.push_back(cm.ta);
      tb.push_back(cm.tb);
      m_.push_back(checked_int(cm.m, "m"));
      n_.push_back(checked_int(cm.n, "n"));
      k_.push_back(checked_int(cm.k, "k"));
      lda.push_back(checked_int(cm.ld_first, "ld"));
      ldb.push_back(checked_int(cm.ld_second, "ld"));
      ldc.push_back(checked_int(cm.ldc, "ldc"));
      size.push_back(1);
    }
    row += r;
  }
  const int groups = static_cast<int>(pa.size());
  if (groups == 0) return;
  // The pointer arrays must be in device memory. Copies from pageable host memory return once
  // the bytes are staged, so the host vectors may go out of scope after them.
  if (scratch->w_ptrs.size() < pa.size()) {
    scratch->w_ptrs.resize(pa.size());
    scratch->x_ptrs.resize(pa.size());
    scratch->y_ptrs.resize(pa.size());
  }
  const size_t bytes = pa.size() * sizeof(void*);
  MOEKIT_CUDA_CHECK(cudaMemcpyAsync(scratch->w_ptrs.data(), pb.data(), bytes, cudaMemcpyHostToDevice, ctx.stream()));
  MOEKIT_CUDA_CHECK(cudaMemcpyAsync(scratch->x_ptrs.data(), pa.data(), bytes, cudaMemcpyHostToDevice, ctx.stream()));
  MOEKIT_CUDA_CHECK(cudaMemcpyAsync(scratch->y_ptrs.data(), pc.data(), bytes, cudaMemcpyHostToDevice, ctx.stream()));
  const std::vector<float> alpha(groups, 1.f), beta(groups, 0.f);
  const cudaDataType_t t = cuda_type(ab_c);
  // First operand of the column-major call is the row-major B (the weights), second the rows.
  MOEKIT_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(ctx.cublas(), ta.data(), tb.data(), m_.data(), n_.data(), k_.data(),
                                                 alpha.data(), scratch->w_ptrs.data(), t, lda.data(),
                                                 scratch->x_ptrs.data(), t, ldb.data(), beta.data(),
                                                 scratch->y_ptrs.data(), t, ldc.data(), groups, size.data(),
                                                 CUBLAS_COMPUTE_32F));
}

void grouped_weight_grad_cuda(const cuda::Context& ctx, DType ab, const int64_t* rows, int64_t count, int64_t m,
                              int64_t n, float* dw, int64_t dw_stride, const void* dy, const void* x) {
  const size_t es = dtype_size(ab);
  int64_t row = 0;
  for (int64_t e = 0; e < count; ++e) {
    const int64_t r = rows[e];
    if (r > 0) {
      GemmArgs g;
      g.op = GemmOp::kTN;
      g.m = m;
      g.n = n;
      g.k = r;
      g.ab = ab;
      g.c = DType::kF32;
      g.beta = 1.f;
      gemm_cuda(ctx, g, dw + e * dw_stride, static_cast<const char*>(dy) + row * m * es,
                static_cast<const char*>(x) + row * n * es);
    }
    row += r;
  }
}

}  // namespace moekit::kernels
