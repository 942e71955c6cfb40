#include "moe/moe_layer.h"

#include <cmath>

#include "kernels/matmul.h"

namespace moekit::moe {

void MoeLayer::forward(float* y, MoeCache* c, const float* x, int64_t T) const {
  const int64_t H = d_.hidden, k = d_.topk;
  router_forward(&c->router, x, p_.router.w, T, H, d_.experts, k, d_.norm_topk);
  c->plan = make_dispatch_plan(c->router.idx.data(), T, k, d_.experts);
  c->xp.resize(T * k * H);
  c->yp.resize(T * k * H);
  dispatch_rows(c->xp.data(), x, c->plan, H);
  experts_forward(c->yp.data(), &c->experts, c->xp.data(), stack(), c->plan);
  combine_rows(y, 0.f, c->yp.data(), c->router.weights.data(), c->plan, H);
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
  for (int64_t e = 0; e < r.experts; ++e) s.counts[e] = static_cast<double>(c.plan.counts[e]);
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
  std::vector<float> dyp(T * k * H), dxp(T * k * H), dw(T * k);
  combine_rows_backward(dyp.data(), dw.data(), dy, c.yp.data(), c.router.weights.data(), c.plan, H);
  experts_backward(dxp.data(), dyp.data(), c.xp.data(), c.experts, stack(), c.plan);
  dispatch_rows_backward(dx, 0.f, dxp.data(), c.plan, H);
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
