#include "moe/router.h"

#include "kernels/matmul.h"
#include "moe/router_math.h"

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
    float* p = r->probs.data() + t * E;
    r->lse[t] = router_softmax(p, r->logits.data() + t * E, E);
    router_topk(r->idx.data() + t * k, r->weights.data() + t * k, p, E, k, norm_topk);
  }
}

void router_backward(float* dlogits, const RouterState& r, const float* dweights, const float* dprob_per_expert,
                     float z_scale) {
  const int64_t T = r.tokens, E = r.experts, k = r.topk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    router_backward_token(dlogits + t * E, r.probs.data() + t * E, r.idx.data() + t * k, r.weights.data() + t * k,
                          dweights + t * k, dprob_per_expert, r.lse[t], z_scale, E, k, r.norm_topk);
}

}  // namespace moekit::moe
