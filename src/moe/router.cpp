#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/matmul.h"

namespace moekit::moe {

void router_forward(RouterState* r, const float* x, const float* w_router, int64_t T, int64_t hidden, int64_t E,
                    int64_t k, bool norm_topk) {
  r->tokens = T;
  r->experts = E;
  r->topk = k;
  r->norm_topk = norm_topk;
  r->logits.resize(T * E);
  r->probs.resize(T * E);
  r->lse.resize(T);
  r->idx.resize(T * k);
  r->weights.resize(T * k);
  kernels::matmul_nt(r->logits.data(), x, w_router, T, E, hidden);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* z = r->logits.data() + t * E;
    float* p = r->probs.data() + t * E;
    float mx = *std::max_element(z, z + E);
    float sum = 0.f;
    for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(z[e] - mx));
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    r->lse[t] = mx + std::log(sum);
    // Top-k by probability; ties go to the lower expert index (deterministic).
    int32_t order[1024];
    std::vector<int32_t> big;
    int32_t* o = order;
    if (E > 1024) { big.resize(E); o = big.data(); }
    std::iota(o, o + E, 0);
    std::partial_sort(o, o + k, o + E, [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float s = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      r->idx[t * k + j] = o[j];
      s += (r->weights[t * k + j] = p[o[j]]);
    }
    if (norm_topk)
      for (int64_t j = 0; j < k; ++j) r->weights[t * k + j] /= s;
  }
}

void router_backward(float* dlogits, const RouterState& r, const float* dweights, const float* dprob_per_expert,
                     float z_scale) {
  const int64_t T = r.tokens, E = r.experts, k = r.topk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* p = r.probs.data() + t * E;
    float* dz = dlogits + t * E;
    // dp: first the per-expert terms, then the routed weights' contribution.
    for (int64_t e = 0; e < E; ++e) dz[e] = dprob_per_expert ? dprob_per_expert[e] : 0.f;
    const int32_t* idx = r.idx.data() + t * k;
    const float* dw = dweights + t * k;
    if (r.norm_topk) {
      // w_j = p_j / S, S = sum_sel p:  dp_j = (dw_j - sum_i dw_i w_i) / S
      const float* w = r.weights.data() + t * k;
      float s = 0.f, dot = 0.f;
      for (int64_t j = 0; j < k; ++j) {
        s += p[idx[j]];
        dot += dw[j] * w[j];
      }
      for (int64_t j = 0; j < k; ++j) dz[idx[j]] += (dw[j] - dot) / s;
    } else {
      for (int64_t j = 0; j < k; ++j) dz[idx[j]] += dw[j];
    }
    // Softmax backward: dz_e = p_e (dp_e - sum_i p_i dp_i); the z-loss adds 2 c lse p_e.
    float dot = 0.f;
    for (int64_t e = 0; e < E; ++e) dot += p[e] * dz[e];
    const float zg = 2.f * z_scale * r.lse[t];
    for (int64_t e = 0; e < E; ++e) dz[e] = p[e] * (dz[e] - dot) + zg * p[e];
  }
}

}  // namespace moekit::moe
