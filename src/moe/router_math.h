// Per-token router math shared by the CPU router (router.cpp) and the CUDA kernel
// (router_cuda.cu): softmax in f32 over all experts, top-k by probability (ties to the lower
// expert index), optional renormalisation, and the backward of all three plus the per-expert
// load-balancing gradient and the z-loss. One call handles one token's row of E logits.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/half.h"

namespace moekit::moe {

// p (E) <- softmax(z (E)); returns logsumexp(z).
MOEKIT_HD float router_softmax(float* p, const float* z, int64_t E) {
  float mx = z[0];
  for (int64_t e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
  float sum = 0.f;
  for (int64_t e = 0; e < E; ++e) sum += (p[e] = expf(z[e] - mx));
  for (int64_t e = 0; e < E; ++e) p[e] /= sum;
  return mx + logf(sum);
}

// Does expert a rank before expert b? Higher probability first; equal ones by lower index.
MOEKIT_HD bool router_before(const float* p, int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); }

// idx (k), w (k) <- the k best experts of p (E) in descending order and their weights,
// renormalised to sum to one when norm_topk. k passes over E: k is small (4 for Qwen).
MOEKIT_HD void router_topk(int32_t* idx, float* w, const float* p, int64_t E, int64_t k, bool norm_topk) {
  for (int64_t j = 0; j < k; ++j) {
    int32_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t i = 0; i < j; ++i) taken = taken || idx[i] == e;
      if (!taken && (best < 0 || router_before(p, static_cast<int32_t>(e), best))) best = static_cast<int32_t>(e);
    }
    idx[j] = best;
  }
  float s = 0.f;
  for (int64_t j = 0; j < k; ++j) s += (w[j] = p[idx[j]]);
  if (norm_topk)
    for (int64_t j = 0; j < k; ++j) w[j] /= s;
}

// dz (E) <- gradient w.r.t. one token's logits from
//   dw (k): gradient w.r.t. its combine weights,
//   dprob (E, may be null): a per-expert gradient on the probabilities (load-balancing losses),
//   z_scale: coefficient c of c * lse^2 (router z-loss).
MOEKIT_HD void router_backward_token(float* dz, const float* p, const int32_t* idx, const float* w, const float* dw,
                                     const float* dprob, float lse, float z_scale, int64_t E, int64_t k,
                                     bool norm_topk) {
  for (int64_t e = 0; e < E; ++e) dz[e] = dprob ? dprob[e] : 0.f;
  if (norm_topk) {
    // w_j = p_j / S, S = sum_sel p:  dp_j = (dw_j - sum_i dw_i w_i) / S
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
  const float zg = 2.f * z_scale * lse;
  for (int64_t e = 0; e < E; ++e) dz[e] = p[e] * (dz[e] - dot) + zg * p[e];
}

}  // namespace moekit::moe
