#include "moe/router.h"

#include "moe/router_math.h"

namespace moekit::moe {

void router_forward_cpu(float* scores, float* lse, int32_t* idx, float* weights, const float* logits,
                        const float* bias, int64_t T, int64_t E, int64_t k, bool norm_topk, bool sigmoid) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* s = scores + t * E;
    lse[t] = router_scores(s, logits + t * E, E, sigmoid);
    router_topk(idx + t * k, weights + t * k, s, bias, E, k, norm_topk);
  }
}

void router_backward_cpu(float* dlogits, const float* scores, const float* lse, const int32_t* idx,
                         const float* weights, const float* dweights, const float* dscore, float z_scale, int64_t T,
                         int64_t E, int64_t k, bool norm_topk, bool sigmoid) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    router_backward_token(dlogits + t * E, scores + t * E, idx + t * k, weights + t * k, dweights + t * k, dscore,
                          lse[t], z_scale, E, k, norm_topk, sigmoid);
}

void router_stats_cpu(double* score_sum, double* lse_sq_sum, const float* scores, const float* lse, int64_t T,
                      int64_t E) {
  for (int64_t e = 0; e < E; ++e) score_sum[e] = 0.0;
  double sq = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) score_sum[e] += scores[t * E + e];
    sq += static_cast<double>(lse[t]) * lse[t];
  }
  *lse_sq_sum = sq;
}

}  // namespace moekit::moe
