#include "moe/moe_layer.h"

#include <algorithm>
#include <numeric>

#include "core/check.h"
#include "model/mlp.h"
#include "moe/dispatch.h"

namespace moekit::moe {

using backend::GemmOp;
using backend::reserve_act;
using backend::reserve_n;

MoeLayer::MoeLayer(backend::Backend& be, MoeParams p, MoeDims d, std::unique_ptr<TokenDispatcher> dispatcher,
                   MoeScratch& scratch)
    : be_(be), p_(p), d_(d), dispatcher_(std::move(dispatcher)), scratch_(scratch),
      bias_(be), scores_(be), lse_(be), idx_(be), weights_(be), row_of_(be),
      xp_(be), e_gu_(be), e_act_(be), s_gu_(be), s_act_(be), s_out_(be), s_gate_(be) {
  MOEKIT_CHECK(d_.topk >= 1 && d_.topk <= d_.experts, "MoeLayer: top-k ", d_.topk, " must be in [1, ", d_.experts,
               "]");
  if (d_.expert_bias) set_expert_bias(std::vector<float>(static_cast<size_t>(d_.experts), 0.f));
}

void MoeLayer::set_expert_bias(const std::vector<float>& bias) {
  MOEKIT_CHECK(d_.expert_bias, "MoeLayer: this layer has no expert bias (moe_router_enable_expert_bias is off)");
  MOEKIT_CHECK(static_cast<int64_t>(bias.size()) == d_.experts, "MoeLayer: expert bias of ", bias.size(),
               " values for ", d_.experts, " experts");
  bias_host_ = bias;
  be_.upload(bias_.reserve(bias.size() * sizeof(float)), bias.data(), bias.size() * sizeof(float));
}

int64_t MoeLayer::dropped() const {
  int64_t n = 0;
  for (size_t e = 0; e < chosen_.size(); ++e) n += chosen_[e] - kept_[e];
  return n;
}

const float* MoeLayer::router_input(const void* x, int64_t T) {
  if (be_.compute_dtype() == DType::kF32) return static_cast<const float*>(x);
  float* x32 = reserve_n<float>(scratch_.x32, T * d_.hidden);
  be_.to_f32(x32, x, T * d_.hidden);
  return x32;
}

void MoeLayer::forward(void* y, const void* x, int64_t T, const MoeOptions& opt) {
  const int64_t H = d_.hidden, E = d_.experts, k = d_.topk, Is = d_.shared_inter;
  tokens_ = T;
  // Router in f32 (DESIGN.md section 5): the normalised input widened, the f32 master weights.
  float* logits = reserve_n<float>(scratch_.logits, T * E);
  be_.gemm({GemmOp::kNT, T, E, H}, logits, router_input(x, T), p_.router.w);
  be_.router_forward(reserve_n<float>(scores_, T * E), reserve_n<float>(lse_, T),
                     reserve_n<int32_t>(idx_, T * k),
                     reserve_n<float>(weights_, T * k), logits, d_.expert_bias ? bias_.as<float>() : nullptr, spec(), T);
  // Local plan: (token, slot) pairs in expert order, the experts' capacity applied here, before
  // anything leaves the rank, so every layout drops the same pairs.
  capacity_ = expert_capacity(T, k, E, opt.capacity_factor);
  auto* row_of = reserve_n<int32_t>(row_of_, T * k);
  auto* token_of = reserve_n<int32_t>(scratch_.token_of, T * k);
  chosen_ = be_.dispatch_plan(row_of, token_of, idx_.as<int32_t>(), T, k, E, capacity_);
  kept_ = chosen_;
  if (capacity_ >= 0)
    for (auto& c : kept_) c = std::min(c, capacity_);
  const int64_t R = std::accumulate(kept_.begin(), kept_.end(), int64_t{0});
  void* xp = reserve_act(xp_, R * H);
  be_.gather_rows(xp, x, token_of, R, H);
  io_ = dispatcher_->dispatch(xp, kept_);
  const int64_t I = d_.inter;
  be_.experts_forward(io_.out, reserve_act(e_gu_, io_.rows * 2 * I), reserve_act(e_act_, io_.rows * I), io_.in, p_.experts.c,
                      io_.counts, dispatcher_->local_experts(), H, I);
  yp_ = dispatcher_->combine();
  be_.combine_rows(y, 0.f, yp_, weights_.as<float>(), row_of, T, k, H);
  if (!p_.shared_gate_up.w) return;
  void* s_gu = reserve_act(s_gu_, T * 2 * Is);
  void* s_act = reserve_act(s_act_, T * Is);
  if (!p_.shared_gate.w) {  // ungated (DeepSeekMoE): y += shared(x)
    model::mlp_forward(be_, y, 1.f, s_gu, s_act, x, p_.shared_gate_up, p_.shared_down, T, H, Is);
    return;
  }
  void* s_out = reserve_act(s_out_, T * H);
  model::mlp_forward(be_, s_out, 0.f, s_gu, s_act, x, p_.shared_gate_up, p_.shared_down, T, H, Is);
  be_.gemm({GemmOp::kNT, T, 1, H, be_.compute_dtype()}, reserve_n<float>(s_gate_, T), x, p_.shared_gate.c);  // gate logits, f32
  be_.sigmoid_gate_forward(y, s_gate_.as<float>(), s_out, T, H);
}

RouterStats MoeLayer::stats() const {
  RouterStats s;
  s.tokens = tokens_;
  s.counts.assign(chosen_.begin(), chosen_.end());
  s.prob_sum.assign(static_cast<size_t>(d_.experts), 0.0);
  be_.router_stats(s.prob_sum.data(), &s.lse_sq_sum, scores_.as<float>(), lse_.as<float>(), tokens_, d_.experts);
  return s;
}

void MoeLayer::backward(void* dx, const void* dy, const void* x, const std::vector<float>& dscore, float z_scale) {
  const int64_t T = tokens_, H = d_.hidden, E = d_.experts, k = d_.topk, I = d_.inter, Is = d_.shared_inter;
  const int32_t* row_of = row_of_.as<int32_t>();
  // Routed path: combine -> experts -> dispatch.
  const int64_t R = std::accumulate(kept_.begin(), kept_.end(), int64_t{0});
  void* dyp = reserve_act(scratch_.dyp, R * H);
  float* dw = reserve_n<float>(scratch_.dw, T * k);
  be_.combine_rows_backward(dyp, dw, dy, yp_, weights_.as<float>(), row_of, T, k, H);
  const ExpertIo bio = dispatcher_->combine_backward(dyp);
  be_.experts_backward(bio.out, p_.experts.g, bio.in, io_.in, e_gu_.data(), e_act_.data(), p_.experts.c, bio.counts,
                       dispatcher_->local_experts(), H, I);
  be_.dispatch_rows_backward(dx, 0.f, dispatcher_->dispatch_backward(), row_of, T, k, H);
  // Router: d logits from the combine weights, the load-balancing term and the z-loss.
  const float* ds = nullptr;
  if (!dscore.empty()) {
    MOEKIT_CHECK(static_cast<int64_t>(dscore.size()) == E, "MoeLayer::backward: ", dscore.size(),
                 " score gradients for ", E, " experts");
    be_.upload(reserve_n<float>(scratch_.dscore, E), dscore.data(), sizeof(float) * static_cast<size_t>(E));
    ds = scratch_.dscore.as<float>();
  }
  void* dlog = reserve_act(scratch_.dlogits, T * E);
  be_.router_backward(dlog, scores_.as<float>(), lse_.as<float>(), idx_.as<int32_t>(), weights_.as<float>(), dw, ds,
                      z_scale, spec(), T);
  // The router weight's gradient in f32 from the f32 input; the input gradient in the compute type.
  const float* x32 = router_input(x, T);
  float* dlog32 = static_cast<float*>(dlog);
  if (be_.compute_dtype() != DType::kF32) {
    dlog32 = reserve_n<float>(scratch_.logits, T * E);
    be_.to_f32(dlog32, dlog, T * E);
  }
  const DType ct = be_.compute_dtype();
  be_.gemm({GemmOp::kTN, E, H, T, DType::kF32, DType::kF32, 1.f, 1.f}, p_.router.g, dlog32, x32);  // dW_r += dz^T x
  be_.gemm({GemmOp::kNN, T, H, E, ct, ct, 1.f, 1.f}, dx, dlog, p_.router.c);                       // dx += dz W_r
  if (!p_.shared_gate_up.w) return;
  const void* dys = dy;
  if (p_.shared_gate.w) {  // y += g s: ds = g dy, d(gate logit) = (dy . s) g (1 - g)
    void* dsh = reserve_act(scratch_.ds, T * H);
    void* da = reserve_act(scratch_.da, T);
    be_.sigmoid_gate_backward(dsh, da, dy, s_out_.data(), s_gate_.as<float>(), T, H);
    be_.gemm({GemmOp::kTN, 1, H, T, ct, DType::kF32, 1.f, 1.f}, p_.shared_gate.g, da, x);  // dw_sg += da^T x
    be_.gemm({GemmOp::kNN, T, H, 1, ct, ct, 1.f, 1.f}, dx, da, p_.shared_gate.c);          // dx += da w_sg
    dys = dsh;
  }
  model::mlp_backward(be_, dx, 1.f, p_.shared_gate_up, p_.shared_down, dys, x, s_gu_.data(), s_act_.data(),
                      reserve_act(scratch_.s_dact, T * Is), reserve_act(scratch_.s_dgu, T * 2 * Is), T, H, Is);
}

}  // namespace moekit::moe
