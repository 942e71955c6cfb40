// CUDA kernels (device pointers, asynchronous on the context's stream). Each has a CPU twin with
// the same argument order in <op>.h and shares its per-element math through <op>_math.h, so the
// CPU tests already exercise the formulas; tests/gpu compares every one with its twin.
//
// Activations are of type T, float or bf16 (cuda::bf16): the f32 instantiation is what the
// GPU-vs-CPU tests compare at f32 tolerance, the bf16 one is the mixed-precision training path.
// Whatever T, statistics (RMSNorm's rstd, softmax sums, losses) are computed in f32, and
// parameters and their gradients are f32 (the master weights; GEMMs read bf16 copies).
// Reductions over rows (weight and bias gradients) write per-block partial sums and add them in a
// fixed order: results are deterministic, run to run.
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include <cstdint>

#include "core/cuda_util.h"

namespace moekit::kernels {

using cuda::Context;

// ---- RMSNorm (rmsnorm.h) ----
// y (T, D), rstd (T) <- x (T, D), w (D)
template <typename T>
void rmsnorm_forward_cuda(const Context& ctx, T* y, float* rstd, const T* x, const float* w, int64_t rows, int64_t dim,
                          float eps);
// dx (T, D) overwritten (or accumulated), dw (D) accumulated.
template <typename T>
void rmsnorm_backward_cuda(const Context& ctx, T* dx, float* dw, const T* dy, const T* x, const float* w,
                           const float* rstd, int64_t rows, int64_t dim, bool accumulate);

// ---- SwiGLU (swiglu.h): gu (rows, 2w) packed [gate | up] ----
template <typename T>
void swiglu_forward_cuda(const Context& ctx, T* h, const T* gu, int64_t rows, int64_t width);
template <typename T>
void swiglu_backward_cuda(const Context& ctx, T* dgu, const T* dh, const T* gu, int64_t rows, int64_t width);

// ---- RoPE (rope.h), in place on (B*S, heads*d); cos/sin (S, d) f32 tables from rope_tables ----
template <typename T>
void rope_apply_cuda(const Context& ctx, T* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
                     int64_t heads, int64_t head_dim, bool inverse);

// ---- Cross-entropy (cross_entropy.h), fused with its gradient ----
// loss_rows (rows) <- per-row loss (0 for targets < 0); dlogits (may alias logits, may be null)
// <- grad_scale * (softmax - onehot). The caller sums loss_rows (sum_cuda).
template <typename T>
void cross_entropy_cuda(const Context& ctx, float* loss_rows, T* dlogits, const T* logits, const int64_t* targets,
                        int64_t rows, int64_t vocab, float grad_scale);

// ---- Embedding ----
// x (T, H) <- rows of table (V, H) (the f32 master) for ids (T). Ids must be in [0, V): the
// host checks them before upload.
template <typename T>
void embedding_forward_cuda(const Context& ctx, T* x, const float* table, const int64_t* ids, int64_t tokens,
                            int64_t hidden);
// dtable (V, H) += scatter of dx rows by ids (f32 atomics: the order of equal ids is not fixed).
template <typename T>
void embedding_backward_cuda(const Context& ctx, float* dtable, const T* dx, const int64_t* ids, int64_t tokens,
                             int64_t hidden);

// ---- Elementwise and small reductions ----
// out (n) <- a + b (out may alias a or b)
template <typename T>
void add_cuda(const Context& ctx, T* out, const T* a, const T* b, int64_t n);
// y (rows, cols) += bias (cols, f32)
template <typename T>
void add_bias_cuda(const Context& ctx, T* y, const float* bias, int64_t rows, int64_t cols);
// dbias (cols, f32) += column sums of dy (rows, cols)
template <typename T>
void bias_grad_cuda(const Context& ctx, float* dbias, const T* dy, int64_t rows, int64_t cols);
// Element type conversions (f32 <-> bf16, round to nearest even), n elements.
void f32_to_bf16_cuda(const Context& ctx, cuda::bf16* out, const float* in, int64_t n);
void bf16_to_f32_cuda(const Context& ctx, float* out, const cuda::bf16* in, int64_t n);
// out (1, f64) <- sum of x (n) in a fixed order.
void sum_cuda(const Context& ctx, double* out, const float* x, int64_t n);
// out (1, f64) <- sum of squares of x (n) in a fixed order (the gradient norm).
void sum_squares_cuda(const Context& ctx, double* out, const float* x, int64_t n);
// x (n) *= factor
void scale_cuda(const Context& ctx, float* x, float factor, int64_t n);
// *count (device u64) += number of elements of x (n) that are NaN or +-Inf.
void count_nonfinite_cuda(const Context& ctx, unsigned long long* count, const float* x, int64_t n);
// x (n) <- f16(x * s) / s (round to nearest even, core/half.h); *overflow (device u64) += the
// rounded values that are not finite.
void round_through_f16_cuda(const Context& ctx, unsigned long long* overflow, float* x, float s, int64_t n);

// ---- Gated shared expert: y (T, H) += sigmoid(a_t) * s (T, H) ----
// gate (T) receives sigmoid(a) (a = x . w_sg, from a GEMM into gate), in place.
template <typename T>
void sigmoid_gate_forward_cuda(const Context& ctx, T* y, float* gate, const T* s, int64_t tokens, int64_t hidden);
// ds (T, H) <- g_t dy_t ; da (T) <- (dy_t . s_t) g_t (1 - g_t), in T: it feeds the gate's GEMMs.
template <typename T>
void sigmoid_gate_backward_cuda(const Context& ctx, T* ds, T* da, const T* dy, const T* s, const float* gate,
                                int64_t tokens, int64_t hidden);

}  // namespace moekit::kernels
#endif
