// Load-balancing and router losses as pure functions of per-layer router statistics. Each
// returns its value and writes the gradient of that value w.r.t. the router probabilities,
// which for these losses is one number per (layer, expert), the same for every token: the
// expert fractions f are piecewise constant (top-k), only the mean probabilities P carry grad.
//
//  - hf_pooled: transformers' load_balancing_loss_func (Switch Transformer, Fedus et al. 2021,
//    as Mixtral/Qwen2-MoE use it): statistics pooled over all MoE layers first,
//    aux = E * sum_e F_e * P_e, F_e = (top-k slots on e) / N, P_e = mean prob, N = layers*T;
//    a balanced router gives k.
//  - switch: the per-layer form (Megatron-Core): L_l = E * sum_e f_le P_le with
//    f_le = count_le / (T k), averaged over layers; balanced value 1.
//  - z-loss (ST-MoE, Zoph et al. 2022): mean over layers and tokens of logsumexp(z)^2.
#pragma once

#include <cstdint>
#include <vector>

namespace moekit::moe {

struct RouterStats {
  int64_t tokens = 0;
  std::vector<double> counts;    // (E) top-k slots that chose e
  std::vector<double> prob_sum;  // (E) sum over tokens of probs[:, e]
  double lse_sq_sum = 0.0;       // sum over tokens of logsumexp^2
};

// grads[l] (E) receives d aux / d probs[l][t, e].
double hf_pooled_aux_loss(const std::vector<RouterStats>& layers, int64_t topk, std::vector<std::vector<float>>* grads);
double switch_aux_loss(const std::vector<RouterStats>& layers, int64_t topk, std::vector<std::vector<float>>* grads);
// z-loss value; the gradient w.r.t. the logits of layer l is 2 * scale_l * lse_t * p_te with
// scale_l = 1 / (tokens_l * layers) — see router_backward's z_scale.
double router_z_loss(const std::vector<RouterStats>& layers, std::vector<float>* z_scale);

}  // namespace moekit::moe
