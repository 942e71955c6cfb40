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
//  - global_batch (Qiu et al. 2025, "Demons in the Detail: On Implementing Load Balancing Loss
//    for Training Specialized Mixture-of-Expert Models"): the switch form with f and P taken
//    over the global batch, i.e. counts, probability sums and tokens summed over every
//    data-parallel rank. A micro-batch of a few sequences is nearly always domain-uniform, so
//    balancing it forces every expert to see every domain; balancing the global batch lets
//    experts specialise. The value is the same on all ranks and for every layout.
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
// `global`: per-layer statistics summed over the `ranks` data-parallel ranks (tokens, counts,
// prob_sum). Returns mean_l E * sum_e f_le P_le with f = counts / (tokens k), P = prob_sum /
// tokens. grads[l][e] is the gradient that makes the *average over ranks* of the per-rank
// objectives equal this loss (the gradient sync averages over ranks): each rank's probability
// sum enters P with weight 1 / tokens_global, so d/dprobs = ranks * E * f_le / (tokens_l L).
// With ranks = 1 it equals switch_aux_loss.
double global_batch_aux_loss(const std::vector<RouterStats>& global, int64_t topk, int ranks,
                             std::vector<std::vector<float>>* grads);

// z-loss value; the gradient w.r.t. the logits of layer l is 2 * scale_l * lse_t * p_te with
// scale_l = 1 / (tokens_l * layers) — see router_backward's z_scale.
double router_z_loss(const std::vector<RouterStats>& layers, std::vector<float>* z_scale);

}  // namespace moekit::moe
