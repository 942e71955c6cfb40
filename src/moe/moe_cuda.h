// The MoE block's own CUDA kernels: router softmax/top-k and its backward (one thread per token,
// router_math.h, the CPU router's formulas), and the local dispatch (dispatch.h) on the device:
// a stable counting sort of the (token, slot) pairs by expert, permute, un-permute with the
// combine weights, and their backwards. Device pointers, asynchronous on the context's stream.
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include <cstdint>

#include "core/cuda_util.h"

namespace moekit::moe {

// Most experts the per-token kernels support (their per-thread arrays are this long).
constexpr int64_t kCudaMaxExperts = 256;

// scores (T, E), lse (T), idx (T, k), weights (T, k) <- logits (T, E) f32; bias (E, may be
// null) shifts the selection only (router_math.h).
void router_forward_cuda(const cuda::Context& ctx, float* scores, float* lse, int32_t* idx, float* weights,
                         const float* logits, const float* bias, int64_t tokens, int64_t experts, int64_t topk,
                         bool norm_topk, bool sigmoid);
// dlogits (T, E) <- as router_backward_cpu (router.h); dprob (E, device, may be null).
template <typename T>
void router_backward_cuda(const cuda::Context& ctx, T* dlogits, const float* probs, const float* lse,
                          const int32_t* idx, const float* weights, const float* dweights, const float* dprob,
                          float z_scale, int64_t tokens, int64_t experts, int64_t topk, bool norm_topk, bool sigmoid);
// out (E, f64) <- column sums of scores (T, E) in a fixed order.
void score_sum_cuda(const cuda::Context& ctx, double* out, const float* scores, int64_t tokens, int64_t experts);

// Dispatch plan on the device, identical to dispatch_plan_cpu: counts (E, pairs that chose each
// expert), offsets (E + 1, over the kept rows), row_of (T*k): the permuted row of pair (t, j) or
// -1 when it is beyond the expert's capacity (< 0: none), token_of (T*k): the token of each row.
// Rows of one expert keep token order.
void dispatch_plan_cuda(const cuda::Context& ctx, int32_t* counts, int32_t* offsets, int32_t* row_of,
                        int32_t* token_of, const int32_t* idx, int64_t tokens, int64_t topk, int64_t experts,
                        int64_t capacity);
// xp (R, H) <- x[token_of[r]]
template <typename T>
void dispatch_rows_cuda(const cuda::Context& ctx, T* xp, const T* x, const int32_t* token_of, int64_t rows,
                        int64_t hidden);
// out[dst[i]] (H) <- in[i] for i < rows: the inverse of dispatch_rows_cuda's gather (the
// expert-parallel regrouping of received rows by local expert, token_dispatcher.h phase 3).
template <typename T>
void scatter_rows_cuda(const cuda::Context& ctx, T* out, const T* in, const int32_t* dst, int64_t rows, int64_t hidden);
// out (T, H) = beta * out + sum_j w[t, j] yp[row_of[t*k + j]] over kept slots, in order.
template <typename T>
void combine_rows_cuda(const cuda::Context& ctx, T* out, float beta, const T* yp, const float* weights,
                       const int32_t* row_of, int64_t tokens, int64_t topk, int64_t hidden);
// dyp[row_of(t, j)] = w[t, j] dout[t]; dweights (T, k, f32) = dout[t] . yp[row_of(t, j)].
template <typename T>
void combine_rows_backward_cuda(const cuda::Context& ctx, T* dyp, float* dweights, const T* dout, const T* yp,
                                const float* weights, const int32_t* row_of, int64_t tokens, int64_t topk,
                                int64_t hidden);
// dx (T, H) = beta * dx + sum_j dxp[row_of(t, j)].
template <typename T>
void dispatch_rows_backward_cuda(const cuda::Context& ctx, T* dx, float beta, const T* dxp, const int32_t* row_of,
                                 int64_t tokens, int64_t topk, int64_t hidden);

}  // namespace moekit::moe
#endif
