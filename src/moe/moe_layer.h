// The Qwen2-MoE sparse block on any backend: router -> local dispatch plan -> token dispatcher
// -> routed experts -> combine, plus the always-on shared expert scaled by a per-token sigmoid
// gate:
//   y = sum_j w_j expert_{i_j}(x) + sigmoid(x . w_sg) * shared(x)
// or, without the gate (DeepSeekMoE, arXiv 2401.06066 eq. 9), y = routed + shared(x).
//
// Extension points, each in one place:
//  - routing (RouterSpec, moe/router_math.h): softmax or sigmoid scores, and an optional
//    per-expert selection bias (aux-loss-free balancing, DeepSeek-V3) that this layer holds as
//    state (not a parameter: no gradient; the trainer updates it from the expert load);
//  - capacity (MoeOptions::capacity_factor): dropless by default; with a factor each expert
//    serves at most ceil(factor * T * k / E) of this rank's (token, slot) pairs per forward,
//    in token order (the dropped pairs give the token nothing from that expert);
//  - the dispatcher (moe/token_dispatcher.h): local, or the expert-parallel all-to-all.
//
// Every rank of an expert-parallel group must run forward and backward of the same layers in
// the same order. The router runs in f32 whatever the activation type (DESIGN.md section 5).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/params.h"
#include "moe/aux_loss.h"
#include "moe/token_dispatcher.h"

namespace moekit::moe {

struct MoeParams {
  model::Param router;          // (E, H)
  model::Param experts;         // stack base: this rank's first expert's gate_proj
  model::Param shared_gate_up;  // (2Is, H); w == nullptr when there is no shared expert
  model::Param shared_down;     // (H, Is)
  model::Param shared_gate;     // (1, H); w == nullptr: the shared expert is ungated
};

struct MoeDims {
  int64_t hidden = 0, experts = 0, topk = 0, inter = 0, shared_inter = 0;
  bool norm_topk = false;
  backend::ScoreFunction score = backend::ScoreFunction::kSoftmax;
  bool expert_bias = false;  // aux-loss-free balancing: a selection bias per expert
};

// Run-time settings (the run config's `moe:` section).
struct MoeOptions {
  double capacity_factor = 0.0;  // <= 0: dropless
};

// Buffers a MoE layer needs only within its forward or its backward: one set serves every MoE
// layer of a model (Model owns it), so their size is paid once, not per layer.
struct MoeScratch {
  explicit MoeScratch(backend::Backend& be)
      : dispatch(be), logits(be), x32(be), token_of(be), dyp(be), dw(be), dlogits(be), dscore(be), ds(be), da(be),
        s_dact(be), s_dgu(be) {}
  DispatchScratch dispatch;
  backend::Buffer logits, x32, token_of;                              // forward
  backend::Buffer dyp, dw, dlogits, dscore, ds, da, s_dact, s_dgu;  // backward
};

class MoeLayer {
 public:
  // p.experts points at this rank's first expert; `dispatcher` decides which experts are local.
  MoeLayer(backend::Backend& be, MoeParams p, MoeDims d, std::unique_ptr<TokenDispatcher> dispatcher,
           MoeScratch& scratch);

  // y (T, H) <- block(x (T, H)); x must stay unchanged until backward().
  void forward(void* y, const void* x, int64_t tokens, const MoeOptions& opt);
  // This forward's router statistics (counts are the router's choices, before any dropping).
  RouterStats stats() const;
  // dx (T, H) overwritten. dscore (E, host, may be empty) and z_scale: router-loss gradients.
  void backward(void* dx, const void* dy, const void* x, const std::vector<float>& dscore, float z_scale);

  // Pairs routed to each expert in the last forward (before dropping), and kept after it.
  const std::vector<int64_t>& chosen_counts() const { return chosen_; }
  int64_t dropped() const;
  int64_t local_experts() const { return dispatcher_->local_experts(); }

  // Aux-loss-free balancing state (E, host): the bias added to the scores for selection.
  const std::vector<float>& expert_bias() const { return bias_host_; }
  void set_expert_bias(const std::vector<float>& bias);

 private:
  backend::RouterSpec spec() const { return {d_.experts, d_.topk, d_.norm_topk, d_.score}; }

  // The router's input in f32 (a cast when the activations are not f32).
  const float* router_input(const void* x, int64_t tokens);

  backend::Backend& be_;
  MoeParams p_;
  MoeDims d_;
  std::unique_ptr<TokenDispatcher> dispatcher_;
  MoeScratch& scratch_;
  std::vector<float> bias_host_;
  backend::Buffer bias_;
  // State of the last forward, kept for the backward.
  int64_t tokens_ = 0, capacity_ = -1;
  std::vector<int64_t> chosen_, kept_;
  ExpertIo io_;                        // the experts' rows (owned by the dispatcher)
  const void* yp_ = nullptr;           // expert outputs in plan order (owned by the dispatcher)
  backend::Buffer scores_, lse_, idx_, weights_, row_of_;
  backend::Buffer xp_, e_gu_, e_act_;  // dispatched rows (R, H), expert activations
  backend::Buffer s_gu_, s_act_, s_out_, s_gate_;  // shared expert
};

}  // namespace moekit::moe
