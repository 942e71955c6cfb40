// Causal grouped-query attention on the GPU, the same function as kernels/attention.h over the
// same interleaved layouts: q, out (B*S, H*d); k, v (B*S, Hkv*d), already rotated. Two
// implementations with one contract (out and the log-sum-exp per row forward; the backward
// recomputes the probabilities from the log-sum-exp):
//
// kGemm (the default): the products on tensor cores through cuBLAS strided-batched GEMMs, one
// sequence at a time: scores (H, S, S) in f32, a causal softmax kernel writing the
// probabilities in the activation type and the log-sum-exp, then P V; the backward recomputes
// the scores, takes dV = P^T dO, dP = dO V^T, dS = P (dP - delta) / sqrt(d), dQ = dS K,
// dK = dS^T Q (the CPU kernel's formulas). Its workspace is one sequence's (H, S, S) scores in
// f32 plus probabilities in T (384 MiB at H = 16, S = 2048 in bf16). The masked upper triangle
// is computed and discarded (2x the causal FLOPs): a fused kernel (cuDNN's SDPA) is the next
// step for speed.
//
// kPlain: plain CUDA kernels, the reference the GEMM path is tested against. It never materialises the (S, S)
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

enum class AttnImpl { kGemm, kPlain };

// Device memory the GEMM path reuses across calls (grown as needed).
struct AttnWorkspace {
  cuda::DeviceBuffer scores;  // (H, S, S) f32: scores, then dP in the backward
  cuda::DeviceBuffer probs;   // (H, S, S) T: probabilities, then dS in the backward
  cuda::DeviceBuffer dkv32;   // (2, S, Hkv*d) f32: a sequence's dK and dV summed over the query
                              // heads of each group before one rounding to bf16
};

// out (B*S, H*d); lse (B, H, S) f32, saved for the backward. ws may be null for kPlain.
template <typename T>
void attention_forward_cuda(const cuda::Context& ctx, T* out, float* lse, const T* q, const T* k, const T* v,
                            const AttnShape& s, AttnImpl impl = AttnImpl::kPlain, AttnWorkspace* ws = nullptr);
// dq (B*S, H*d), dk, dv (B*S, Hkv*d): overwritten. delta: scratch (B, H, S) f32.
template <typename T>
void attention_backward_cuda(const cuda::Context& ctx, T* dq, T* dk, T* dv, float* delta, const T* dout, const T* out,
                             const float* lse, const T* q, const T* k, const T* v, const AttnShape& s,
                             AttnImpl impl = AttnImpl::kPlain, AttnWorkspace* ws = nullptr);

}  // namespace moekit::kernels
#endif
