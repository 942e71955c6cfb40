// The Qwen2-MoE sparse block: router -> dispatch -> routed experts -> combine, plus the
// always-on shared expert scaled by a per-token sigmoid gate:
//   y = sum_j w_j expert_{i_j}(x) + sigmoid(x . w_sg) * shared(x)
// or, without the gate (DeepSeekMoE, arXiv 2401.06066 eq. 9), y = routed + shared(x).
// With expert parallelism (ExpertParallel with a group of size > 1) the layer holds only its
// E/ep experts and the routed path goes through the all-to-all dispatcher
// (moe/token_dispatcher.h); every rank of the ep group must run forward and backward of the
// same layers in the same order. Without it the routed path is the local dispatch of
// moe/dispatch.h, unchanged.
#pragma once

#include <cstdint>
#include <vector>

#include "model/mlp.h"
#include "model/params.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "moe/token_dispatcher.h"
#include "parallel/communicator.h"

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

// The expert-parallel group this layer's experts are spread over. The layer does not own it.
struct ExpertParallel {
  parallel::Communicator* group = nullptr;  // null or size 1: every expert is local
  int64_t first_expert = 0;                 // global index of this rank's first expert
  bool active() const { return group && group->size() > 1; }
};

struct MoeCache {
  RouterState router;
  DispatchHandle dispatch;    // dispatch.plan: the local (token, slot) -> row plan
  std::vector<float> xp, yp;  // (T*k, H) dispatched inputs and expert outputs (plan order)
  std::vector<float> xg, yg;  // expert parallel: (R, H) received rows grouped by local expert
  ExpertsCache experts;
  std::vector<float> s_gu, s_act, s_out, s_gate;  // shared expert: (T,2Is), (T,Is), (T,H), (T); last two gated only
};

class MoeLayer {
 public:
  // p.experts points at this rank's first expert (E/ep of them with expert parallelism).
  MoeLayer(MoeParams p, MoeDims d, ExpertParallel ep = {});

  void forward(float* y, MoeCache* c, const float* x, int64_t tokens) const;
  RouterStats stats(const MoeCache& c) const;
  // dx overwritten. dprob (E, may be null) and z_scale: router-loss gradients (see router.h).
  void backward(float* dx, const float* dy, const MoeCache& c, const float* x, const float* dprob,
                float z_scale) const;

  int64_t local_experts() const { return local_experts_; }
  ExpertStack stack() const { return {p_.experts.w, p_.experts.g, local_experts_, d_.hidden, d_.inter}; }

 private:
  void routed_forward(float* y, MoeCache* c, const float* x, int64_t tokens) const;
  void routed_backward(float* dx, float* dweights, const float* dy, const MoeCache& c) const;

  MoeParams p_;
  MoeDims d_;
  ExpertParallel ep_;
  int64_t local_experts_;
};

}  // namespace moekit::moe
