// Causal grouped-query attention on the GPU, the same function as kernels/attention.h over the
// same interleaved layouts: q, out (B*S, H*d); k, v (B*S, Hkv*d), already rotated.
//
// This is the plain CUDA implementation: the fallback where cuDNN's fused attention does not
// apply, and the reference the fused path is tested against. It never materialises the (S, S)
// probabilities: the forward keeps one log-sum-exp per (batch, head, query) and the backward
// recomputes scores from it (the FlashAttention recipe, Dao et al. 2022, without the tiling).
// One warp owns one row: a query row in the forward and for dq, a key row for dk/dv (summed over
// the query heads of its group), so every output element has one writer and no atomics are
// needed: results are deterministic.
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include "core/cuda_util.h"
#include "kernels/attention.h"

namespace moekit::kernels {

// Largest head_dim the plain kernels support (8 values per lane of a warp).
constexpr int64_t kAttnMaxHeadDim = 256;

// out (B*S, H*d); lse (B, H, S) f32, saved for the backward.
template <typename T>
void attention_forward_cuda(const cuda::Context& ctx, T* out, float* lse, const T* q, const T* k, const T* v,
                            const AttnShape& s);
// dq (B*S, H*d), dk, dv (B*S, Hkv*d): overwritten. delta: scratch (B, H, S) f32.
template <typename T>
void attention_backward_cuda(const cuda::Context& ctx, T* dq, T* dk, T* dv, float* delta, const T* dout, const T* out,
                             const float* lse, const T* q, const T* k, const T* v, const AttnShape& s);

}  // namespace moekit::kernels
#endif
