// Qwen2-MoE router: logits = x W_r^T (no bias), softmax over all experts in f32, then top-k on
// the probabilities ("softmax then top-k"); the k weights are renormalised to sum to one only
// when norm_topk_prob is set (Qwen1.5-MoE leaves them unnormalised).
#pragma once

#include <cstdint>
#include <vector>

namespace moekit::moe {

struct RouterState {
  int64_t tokens = 0, experts = 0, topk = 0;
  bool norm_topk = false;
  std::vector<float> logits;   // (T, E)
  std::vector<float> probs;    // (T, E) softmax(logits)
  std::vector<float> lse;      // (T) logsumexp(logits), for the z-loss
  std::vector<int32_t> idx;    // (T, k) chosen experts, by descending probability
  std::vector<float> weights;  // (T, k) combine weights
};

void router_forward(RouterState* r, const float* x, const float* w_router, int64_t tokens, int64_t hidden,
                    int64_t experts, int64_t topk, bool norm_topk);

// Gradient w.r.t. the router logits, overwriting dlogits (T, E), from
//  - dweights (T, k): gradient of the loss w.r.t. the combine weights,
//  - dprob_per_expert (E, may be null): a gradient on probs[t, e] that is the same for every
//    token (the load-balancing losses have this form),
//  - z_scale: coefficient c of a term c * sum_t lse_t^2 (router z-loss), 0 for none.
void router_backward(float* dlogits, const RouterState& r, const float* dweights, const float* dprob_per_expert,
                     float z_scale);

}  // namespace moekit::moe
