#include "moe/moe_layer.h"

#include <cmath>

#include "core/check.h"
#include "kernels/matmul.h"

namespace moekit::moe {

MoeLayer::MoeLayer(MoeParams p, MoeDims d, ExpertParallel ep) : p_(p), d_(d), ep_(ep), local_experts_(d.experts) {
  if (ep_.active()) {
    const int P = ep_.group->size();
    MOEKIT_CHECK(d_.experts % P == 0, "MoeLayer: num_experts ", d_.experts, " is not divisible by the ep group size ",
                 P);
    local_experts_ = d_.experts / P;
    MOEKIT_CHECK(ep_.first_expert == ep_.group->rank() * local_experts_, "MoeLayer: ep rank ", ep_.group->rank(),
                 " must hold experts from ", ep_.group->rank() * local_experts_, ", got first expert ",
                 ep_.first_expert);
  }
}

void MoeLayer::routed_forward(float* y, MoeCache* c, const float* x, int64_t T) const {
  const int64_t H = d_.hidden, k = d_.topk;
  const float* w = c->router.weights.data();
  if (!ep_.active()) {
    // Single-rank path: plan, permute, grouped experts, combine.
    DispatchHandle& h = c->dispatch;
    h = DispatchHandle{};
    h.plan = make_dispatch_plan(c->router.idx.data(), T, k, d_.experts);
    c->xp.resize(T * k * H);
    c->yp.resize(T * k * H);
    dispatch_rows(c->xp.data(), x, h.plan, H);
    experts_forward(c->yp.data(), &c->experts, c->xp.data(), stack(), h.plan);
    combine_rows(y, 0.f, c->yp.data(), w, h.plan, H);
    return;
  }
  // The six phases (token_dispatcher.h); only token_dispatch / token_combine communicate.
  parallel::Communicator& g = *ep_.group;
  std::vector<float> recv;
  dispatch_preprocess(&c->dispatch, &c->xp, x, c->router.idx.data(), T, k, d_.experts, H, g.size());
  token_dispatch(&recv, &c->dispatch, c->xp.data(), H, g);
  dispatch_postprocess(&c->xg, recv.data(), c->dispatch, H);
  c->yg.resize(c->xg.size());
  experts_forward(c->yg.data(), &c->experts, c->xg.data(), stack(), c->dispatch.expert_layout);
  combine_preprocess(&recv, c->yg.data(), c->dispatch, H);
  token_combine(&c->yp, recv.data(), c->dispatch, H, g);
  combine_postprocess(y, c->yp.data(), w, c->dispatch, H);
}

void MoeLayer::routed_backward(float* dx, float* dw, const float* dy, const MoeCache& c) const {
  const int64_t T = c.router.tokens, H = d_.hidden, k = d_.topk;
  const DispatchHandle& h = c.dispatch;
  std::vector<float> dyp(T * k * H);
  combine_rows_backward(dyp.data(), dw, dy, c.yp.data(), c.router.weights.data(), h.plan, H);
  if (!ep_.active()) {
    std::vector<float> dxp(T * k * H);
    experts_backward(dxp.data(), dyp.data(), c.xp.data(), c.experts, stack(), h.plan);
    dispatch_rows_backward(dx, 0.f, dxp.data(), h.plan, H);
    return;
  }
  // Reverse of the forward phases with the same handle: dy rows travel to the expert owners,
  // the input gradients travel back.
  parallel::Communicator& g = *ep_.group;
  std::vector<float> drecv, dyg, dxg(c.xg.size()), dxp;
  token_combine_backward(&drecv, dyp.data(), h, H, g);
  dispatch_postprocess(&dyg, drecv.data(), h, H);  // inverse of combine_preprocess
  experts_backward(dxg.data(), dyg.data(), c.xg.data(), c.experts, stack(), h.expert_layout);
  combine_preprocess(&drecv, dxg.data(), h, H);  // inverse of dispatch_postprocess
  token_dispatch_backward(&dxp, drecv.data(), h, H, g);
  dispatch_rows_backward(dx, 0.f, dxp.data(), h.plan, H);
}

void MoeLayer::forward(float* y, MoeCache* c, const float* x, int64_t T) const {
  const int64_t H = d_.hidden, k = d_.topk;
  router_forward(&c->router, x, p_.router.w, T, H, d_.experts, k, d_.norm_topk);
  routed_forward(y, c, x, T);
  if (!p_.shared_gate_up.w) return;
  const int64_t Is = d_.shared_inter;
  c->s_gu.resize(T * 2 * Is);
  c->s_act.resize(T * Is);
  if (!p_.shared_gate.w) {  // DeepSeekMoE: the shared expert is added ungated
    model::mlp_forward(y, 1.f, c->s_gu.data(), c->s_act.data(), x, {p_.shared_gate_up.w, p_.shared_down.w}, T, H,
                       Is);
    return;
  }
  c->s_out.resize(T * H);
  c->s_gate.resize(T);
  model::mlp_forward(c->s_out.data(), 0.f, c->s_gu.data(), c->s_act.data(), x,
                     {p_.shared_gate_up.w, p_.shared_down.w}, T, H, Is);
  kernels::matmul_nt(c->s_gate.data(), x, p_.shared_gate.w, T, 1, H);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float g = 1.f / (1.f + std::exp(-c->s_gate[t]));
    c->s_gate[t] = g;  // keep the sigmoid output, the backward needs only it
    for (int64_t i = 0; i < H; ++i) y[t * H + i] += g * c->s_out[t * H + i];
  }
}

RouterStats MoeLayer::stats(const MoeCache& c) const {
  const auto& r = c.router;
  RouterStats s;
  s.tokens = r.tokens;
  s.counts.assign(r.experts, 0.0);
  s.prob_sum.assign(r.experts, 0.0);
  for (int64_t e = 0; e < r.experts; ++e) s.counts[e] = static_cast<double>(c.dispatch.plan.counts[e]);
  for (int64_t t = 0; t < r.tokens; ++t) {
    for (int64_t e = 0; e < r.experts; ++e) s.prob_sum[e] += r.probs[t * r.experts + e];
    s.lse_sq_sum += static_cast<double>(r.lse[t]) * r.lse[t];
  }
  return s;
}

void MoeLayer::backward(float* dx, const float* dy, const MoeCache& c, const float* x, const float* dprob,
                        float z_scale) const {
  const int64_t T = c.router.tokens, H = d_.hidden, k = d_.topk, E = d_.experts;
  // Routed path: combine -> experts -> dispatch.
  std::vector<float> dw(T * k);
  routed_backward(dx, dw.data(), dy, c);
  // Router.
  std::vector<float> dlogits(T * E);
  router_backward(dlogits.data(), c.router, dw.data(), dprob, z_scale);
  kernels::matmul_tn(p_.router.g, dlogits.data(), x, E, H, T, 1.f);  // dW_r += dz^T x
  kernels::matmul_nn(dx, dlogits.data(), p_.router.w, T, H, E, 1.f);  // dx += dz W_r
  if (!p_.shared_gate_up.w) return;
  const int64_t Is = d_.shared_inter;
  std::vector<float> scratch(T * 3 * Is);
  if (!p_.shared_gate.w) {  // ungated: y += s_t
    model::mlp_backward(dx, 1.f, {p_.shared_gate_up.g, p_.shared_down.g}, dy, x, c.s_gu.data(), c.s_act.data(),
                        {p_.shared_gate_up.w, p_.shared_down.w}, T, H, Is, scratch.data());
    return;
  }
  // Shared expert: y += g_t * s_t, g_t = sigmoid(a_t), a_t = x_t . w_sg.
  std::vector<float> ds(T * H), da(T);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float g = c.s_gate[t];
    float dot = 0.f;
    for (int64_t i = 0; i < H; ++i) {
      dot += dy[t * H + i] * c.s_out[t * H + i];
      ds[t * H + i] = g * dy[t * H + i];
    }
    da[t] = dot * g * (1.f - g);
  }
  kernels::matmul_tn(p_.shared_gate.g, da.data(), x, 1, H, T, 1.f);
  kernels::matmul_nn(dx, da.data(), p_.shared_gate.w, T, H, 1, 1.f);
  model::mlp_backward(dx, 1.f, {p_.shared_gate_up.g, p_.shared_down.g}, ds.data(), x, c.s_gu.data(),
                      c.s_act.data(), {p_.shared_gate_up.w, p_.shared_down.w}, T, H, Is, scratch.data());
}

}  // namespace moekit::moe
