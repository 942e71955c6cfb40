// The Qwen2-MoE sparse block: router -> dispatch -> routed experts -> combine, plus the
// always-on shared expert scaled by a per-token sigmoid gate:
//   y = sum_j w_j expert_{i_j}(x) + sigmoid(x . w_sg) * shared(x)
// or, without the gate (DeepSeekMoE, arXiv 2401.06066 eq. 9), y = routed + shared(x).
#pragma once

#include <cstdint>
#include <vector>

#include "model/mlp.h"
#include "model/params.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/router.h"

namespace moekit::moe {

struct MoeParams {
  model::Param router;          // (E, H)
  model::Param experts;         // stack base: expert 0 gate_proj
  model::Param shared_gate_up;  // (2Is, H); w == nullptr when there is no shared expert
  model::Param shared_down;     // (H, Is)
  model::Param shared_gate;     // (1, H); w == nullptr: the shared expert is ungated
};

struct MoeDims {
  int64_t hidden, experts, topk, inter, shared_inter;
  bool norm_topk;
};

struct MoeCache {
  RouterState router;
  DispatchPlan plan;
  std::vector<float> xp, yp;  // (T*k, H) dispatched inputs and expert outputs
  ExpertsCache experts;
  std::vector<float> s_gu, s_act, s_out, s_gate;  // shared expert: (T,2Is), (T,Is), (T,H), (T); last two gated only
};

class MoeLayer {
 public:
  MoeLayer(MoeParams p, MoeDims d) : p_(p), d_(d) {}

  void forward(float* y, MoeCache* c, const float* x, int64_t tokens) const;
  RouterStats stats(const MoeCache& c) const;
  // dx overwritten. dprob (E, may be null) and z_scale: router-loss gradients (see router.h).
  void backward(float* dx, const float* dy, const MoeCache& c, const float* x, const float* dprob,
                float z_scale) const;

  ExpertStack stack() const { return {p_.experts.w, p_.experts.g, d_.experts, d_.hidden, d_.inter}; }

 private:
  MoeParams p_;
  MoeDims d_;
};

}  // namespace moekit::moe
