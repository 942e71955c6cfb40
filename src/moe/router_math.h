// Per-token router math shared by the CPU router (router.cpp) and the CUDA kernels
// (moe_cuda.cu), one token's row of E logits per call:
//   scores   softmax over all experts in f32 (Qwen2-MoE, Mixtral), or an element-wise sigmoid
//            (DeepSeek-V3, arXiv 2412.19437 section 2.1.1);
//   top-k    by score + bias (ties to the lower expert index). The per-expert bias is the
//            aux-loss-free balancing term of DeepSeek-V3 (Wang et al. 2024, "Auxiliary-Loss-Free
//            Load Balancing Strategy for Mixture-of-Experts"): it shifts which experts are
//            chosen, never the combine weights, and it is not trained by gradients;
//   weights  the chosen experts' scores, renormalised to sum to one when norm_topk;
// and the backward of all of it, plus the per-expert load-balancing gradient and the z-loss.
// A new routing variant is added here once and both backends run it.
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

// s (E) <- sigmoid(z (E)); returns logsumexp(z) (the z-loss statistic is defined on the logits
// whatever the score function).
MOEKIT_HD float router_sigmoid(float* s, const float* z, int64_t E) {
  float mx = z[0];
  for (int64_t e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
  float sum = 0.f;
  for (int64_t e = 0; e < E; ++e) {
    sum += expf(z[e] - mx);
    s[e] = 1.f / (1.f + expf(-z[e]));
  }
  return mx + logf(sum);
}

// Scores of one token: softmax (sigmoid = false) or sigmoid. Returns logsumexp(z).
MOEKIT_HD float router_scores(float* s, const float* z, int64_t E, bool sigmoid) {
  return sigmoid ? router_sigmoid(s, z, E) : router_softmax(s, z, E);
}

// Does expert a rank before expert b for selection? Higher score + bias first; equal ones by
// lower index.
MOEKIT_HD bool router_before(const float* s, const float* bias, int32_t a, int32_t b) {
  const float ka = bias ? s[a] + bias[a] : s[a], kb = bias ? s[b] + bias[b] : s[b];
  return ka > kb || (ka == kb && a < b);
}

// idx (k), w (k) <- the k best experts of s (E) by s + bias (bias may be null), in that order,
// and their weights s[idx], renormalised to sum to one when norm_topk. k passes over E: k is
// small (4 for Qwen).
MOEKIT_HD void router_topk(int32_t* idx, float* w, const float* s, const float* bias, int64_t E, int64_t k,
                           bool norm_topk) {
  for (int64_t j = 0; j < k; ++j) {
    int32_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t i = 0; i < j; ++i) taken = taken || idx[i] == e;
      if (!taken && (best < 0 || router_before(s, bias, static_cast<int32_t>(e), best))) best = static_cast<int32_t>(e);
    }
    idx[j] = best;
  }
  float sum = 0.f;
  for (int64_t j = 0; j < k; ++j) sum += (w[j] = s[idx[j]]);
  if (norm_topk)
    for (int64_t j = 0; j < k; ++j) w[j] /= sum;
}

// dz (E) <- gradient w.r.t. one token's logits from
//   dw (k): gradient w.r.t. its combine weights,
//   dscore (E, may be null): a per-expert gradient on the scores (load-balancing losses),
//   z_scale: coefficient c of c * lse^2 (router z-loss; softmax scores only: the caller refuses
//   it with sigmoid scores, whose backward has no softmax probabilities).
MOEKIT_HD void router_backward_token(float* dz, const float* s, const int32_t* idx, const float* w, const float* dw,
                                     const float* dscore, float lse, float z_scale, int64_t E, int64_t k,
                                     bool norm_topk, bool sigmoid) {
  for (int64_t e = 0; e < E; ++e) dz[e] = dscore ? dscore[e] : 0.f;
  if (norm_topk) {
    // w_j = s_j / S, S = sum_sel s:  ds_j = (dw_j - sum_i dw_i w_i) / S
    float sum = 0.f, dot = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      sum += s[idx[j]];
      dot += dw[j] * w[j];
    }
    for (int64_t j = 0; j < k; ++j) dz[idx[j]] += (dw[j] - dot) / sum;
  } else {
    for (int64_t j = 0; j < k; ++j) dz[idx[j]] += dw[j];
  }
  if (sigmoid) {  // ds/dz = s (1 - s), element-wise
    for (int64_t e = 0; e < E; ++e) dz[e] *= s[e] * (1.f - s[e]);
    return;
  }
  // Softmax backward: dz_e = p_e (dp_e - sum_i p_i dp_i); the z-loss adds 2 c lse p_e.
  float dot = 0.f;
  for (int64_t e = 0; e < E; ++e) dot += s[e] * dz[e];
  const float zg = 2.f * z_scale * lse;
  for (int64_t e = 0; e < E; ++e) dz[e] = s[e] * (dz[e] - dot) + zg * s[e];
}

}  // namespace moekit::moe
