// CPU router kernels (the CPU backend's router ops): per-token scores, top-k and weights
// (moe/router_math.h), their backward, and the aux-loss statistics. The router's GEMM runs in
// the MoE layer (moe_layer.cpp) through the backend like every other projection.
#pragma once

#include <cstdint>

namespace moekit::moe {

// scores (T, E), lse (T), idx (T, k), weights (T, k) <- logits (T, E); bias (E, may be null)
// shifts the selection only.
void router_forward_cpu(float* scores, float* lse, int32_t* idx, float* weights, const float* logits,
                        const float* bias, int64_t tokens, int64_t experts, int64_t topk, bool norm_topk,
                        bool sigmoid);
// dlogits (T, E) <- from dweights (T, k), dscore (E, may be null) and the z-loss scale.
void router_backward_cpu(float* dlogits, const float* scores, const float* lse, const int32_t* idx,
                         const float* weights, const float* dweights, const float* dscore, float z_scale,
                         int64_t tokens, int64_t experts, int64_t topk, bool norm_topk, bool sigmoid);
// score_sum (E) <- column sums of scores (T, E) in f64 (token order); lse_sq_sum <- sum of lse^2.
void router_stats_cpu(double* score_sum, double* lse_sq_sum, const float* scores, const float* lse, int64_t tokens,
                      int64_t experts);

}  // namespace moekit::moe
