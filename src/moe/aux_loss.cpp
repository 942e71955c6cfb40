#include "moe/aux_loss.h"

#include "core/check.h"

namespace moekit::moe {

double hf_pooled_aux_loss(const std::vector<RouterStats>& layers, int64_t topk,
                          std::vector<std::vector<float>>* grads) {
  MOEKIT_CHECK(!layers.empty(), "hf_pooled_aux_loss: no MoE layers");
  const size_t E = layers[0].counts.size();
  double n = 0;
  std::vector<double> F(E, 0.0), P(E, 0.0);
  for (const auto& l : layers) {
    n += static_cast<double>(l.tokens);
    for (size_t e = 0; e < E; ++e) {
      F[e] += l.counts[e];
      P[e] += l.prob_sum[e];
    }
  }
  double aux = 0;
  for (size_t e = 0; e < E; ++e) {
    F[e] /= n;
    P[e] /= n;
    aux += F[e] * P[e];
  }
  aux *= static_cast<double>(E);
  if (grads) {
    grads->assign(layers.size(), std::vector<float>(E));
    for (size_t l = 0; l < layers.size(); ++l)
      for (size_t e = 0; e < E; ++e) (*grads)[l][e] = static_cast<float>(E * F[e] / n);
  }
  (void)topk;  // F already counts every one of the k slots (balanced value k).
  return aux;
}

double global_batch_aux_loss(const std::vector<RouterStats>& global, int64_t topk, int ranks,
                             std::vector<std::vector<float>>* grads) {
  MOEKIT_CHECK(!global.empty(), "global_batch_aux_loss: no MoE layers");
  MOEKIT_CHECK(ranks >= 1, "global_batch_aux_loss: ranks must be >= 1, got ", ranks);
  const size_t E = global[0].counts.size();
  const double L = static_cast<double>(global.size());
  double total = 0;
  if (grads) grads->assign(global.size(), std::vector<float>(E));
  for (size_t l = 0; l < global.size(); ++l) {
    const double T = static_cast<double>(global[l].tokens);
    MOEKIT_CHECK(T > 0, "global_batch_aux_loss: layer ", l, " saw no tokens");
    double v = 0;
    for (size_t e = 0; e < E; ++e) {
      const double f = global[l].counts[e] / (T * topk);
      v += f * global[l].prob_sum[e] / T;
      if (grads) (*grads)[l][e] = static_cast<float>(ranks * E * f / T / L);
    }
    total += E * v;
  }
  return total / L;
}

double switch_aux_loss(const std::vector<RouterStats>& layers, int64_t topk, std::vector<std::vector<float>>* grads) {
  // The per-micro-batch form is the global-batch form over a data-parallel group of one.
  return global_batch_aux_loss(layers, topk, 1, grads);
}

double router_z_loss(const std::vector<RouterStats>& layers, std::vector<float>* z_scale) {
  MOEKIT_CHECK(!layers.empty(), "router_z_loss: no MoE layers");
  const double L = static_cast<double>(layers.size());
  double total = 0;
  if (z_scale) z_scale->resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const double T = static_cast<double>(layers[l].tokens);
    total += layers[l].lse_sq_sum / T;
    if (z_scale) (*z_scale)[l] = static_cast<float>(1.0 / (T * L));
  }
  return total / L;
}

}  // namespace moekit::moe
