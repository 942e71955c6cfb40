// Finite-difference gradient checks for every layer's backward, plus the grouped-expert
// dispatcher against its sequential oracle. Loss probes are L = sum(r * y) with a fixed random
// r, so dL/dy = r and every output element contributes.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "model/attention_layer.h"
#include "model/mlp.h"
#include "moe/aux_loss.h"
#include "moe/moe_layer.h"
#include "test_util.h"

namespace moekit {
namespace {

using test::expect_grad_matches;
using test::randn;

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

TEST(LayerGrad, RmsNorm) {
  const int64_t T = 5, D = 12;
  auto x = randn(T * D, 1, "x"), w = randn(D, 1, "w", 0.3f, 1.f), r = randn(T * D, 1, "r");
  std::vector<float> y(T * D), rstd(T), dx(T * D), dw(D, 0.f);
  auto loss = [&] {
    kernels::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, D, 1e-6f);
    return dot(y, r);
  };
  loss();
  kernels::rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), T, D, false);
  expect_grad_matches(loss, x.data(), dx.data(), T * D, "rmsnorm dx");
  expect_grad_matches(loss, w.data(), dw.data(), D, "rmsnorm dw");
}

TEST(LayerGrad, RopeIsOrthogonalAndMatchesFormula) {
  const int64_t B = 2, S = 7, H = 3, d = 8;
  std::vector<float> cos, sin;
  kernels::rope_tables(&cos, &sin, S, d, 10000.0);
  // Position 3, pair i=1: angle = 3 * 10000^(-2/8)
  const float ang = 3.0f * (1.0f / std::pow(10000.0f, 2.0f / 8.0f));
  EXPECT_NEAR(cos[3 * d + 1], std::cos(ang), 1e-6);
  EXPECT_NEAR(sin[3 * d + 1 + d / 2], std::sin(ang), 1e-6);
  auto x = randn(B * S * H * d, 2, "x");
  auto y = x;
  kernels::rope_apply(y.data(), cos.data(), sin.data(), B, S, H, d, false);
  // rotate_half: y1 = x1 c - x2 s, y2 = x2 c + x1 s at (b=1, p=3, h=2, i=1)
  const int64_t base = ((1 * S + 3) * H + 2) * d;
  EXPECT_NEAR(y[base + 1], x[base + 1] * std::cos(ang) - x[base + 1 + d / 2] * std::sin(ang), 1e-5);
  EXPECT_NEAR(y[base + 1 + d / 2], x[base + 1 + d / 2] * std::cos(ang) + x[base + 1] * std::sin(ang), 1e-5);
  // Position 0 is the identity; the inverse undoes the rotation; norms are preserved.
  for (int64_t i = 0; i < H * d; ++i) EXPECT_EQ(y[i], x[i]);
  auto z = y;
  kernels::rope_apply(z.data(), cos.data(), sin.data(), B, S, H, d, true);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(z[i], x[i], 1e-5);
}

TEST(LayerGrad, CausalAttentionCore) {
  const kernels::AttnShape s{2, 6, 4, 2, 8};
  const int64_t T = s.batch * s.seq;
  auto q = randn(T * s.heads * s.head_dim, 3, "q"), k = randn(T * s.kv_heads * s.head_dim, 3, "k"),
       v = randn(T * s.kv_heads * s.head_dim, 3, "v"), r = randn(T * s.heads * s.head_dim, 3, "r");
  std::vector<float> out(q.size()), probs(s.batch * s.heads * s.seq * s.seq), dq(q.size()), dk(k.size()),
      dv(v.size());
  auto loss = [&] {
    kernels::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
    return dot(out, r);
  };
  loss();
  // Causality: every probability above the diagonal is exactly zero, rows sum to one.
  for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
    for (int64_t i = 0; i < s.seq; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < s.seq; ++j) {
        const float p = probs[(bh * s.seq + i) * s.seq + j];
        if (j > i) EXPECT_EQ(p, 0.f);
        sum += p;
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  // Token 0 attends only to itself: out = v of its kv head.
  for (int64_t dd = 0; dd < s.head_dim; ++dd) EXPECT_NEAR(out[3 * s.head_dim + dd], v[1 * s.head_dim + dd], 1e-5);
  kernels::attention_backward(dq.data(), dk.data(), dv.data(), r.data(), probs.data(), q.data(), k.data(), v.data(), s);
  expect_grad_matches(loss, q.data(), dq.data(), q.size(), "attention dq");
  expect_grad_matches(loss, k.data(), dk.data(), k.size(), "attention dk");
  expect_grad_matches(loss, v.data(), dv.data(), v.size(), "attention dv");
}

TEST(LayerGrad, AttentionLayerWithBiasAndRope) {
  const int64_t B = 1, S = 5, D = 16, H = 4, KV = 2, d = 4;
  auto wq = randn(H * d * D, 4, "wq", 0.3f), bq = randn(H * d, 4, "bq", 0.3f), wk = randn(KV * d * D, 4, "wk", 0.3f),
       bk = randn(KV * d, 4, "bk", 0.3f), wv = randn(KV * d * D, 4, "wv", 0.3f), bv = randn(KV * d, 4, "bv", 0.3f),
       wo = randn(D * H * d, 4, "wo", 0.3f);
  std::vector<float> gwq(wq.size()), gbq(bq.size()), gwk(wk.size()), gbk(bk.size()), gwv(wv.size()), gbv(bv.size()),
      gwo(wo.size());
  model::AttnParams p{{wq.data(), gwq.data()}, {bq.data(), gbq.data()}, {wk.data(), gwk.data()},
                      {bk.data(), gbk.data()}, {wv.data(), gwv.data()}, {bv.data(), gbv.data()},
                      {wo.data(), gwo.data()}};
  model::AttentionLayer layer(p, D, H, KV, d);
  std::vector<float> cos, sin;
  kernels::rope_tables(&cos, &sin, S, d, 10000.0);
  auto x = randn(B * S * D, 4, "x"), r = randn(B * S * D, 4, "r");
  std::vector<float> y(x.size()), dx(x.size());
  model::AttnCache c;
  auto loss = [&] {
    layer.forward(y.data(), &c, x.data(), B, S, cos.data(), sin.data());
    return dot(y, r);
  };
  loss();
  layer.backward(dx.data(), r.data(), c, x.data(), B, S, cos.data(), sin.data());
  expect_grad_matches(loss, x.data(), dx.data(), x.size(), "attn dx");
  expect_grad_matches(loss, wq.data(), gwq.data(), wq.size(), "attn dWq");
  expect_grad_matches(loss, bq.data(), gbq.data(), bq.size(), "attn dbq");
  expect_grad_matches(loss, wk.data(), gwk.data(), wk.size(), "attn dWk");
  expect_grad_matches(loss, bk.data(), gbk.data(), bk.size(), "attn dbk");
  expect_grad_matches(loss, wv.data(), gwv.data(), wv.size(), "attn dWv");
  expect_grad_matches(loss, bv.data(), gbv.data(), bv.size(), "attn dbv");
  expect_grad_matches(loss, wo.data(), gwo.data(), wo.size(), "attn dWo");
}

TEST(LayerGrad, SwiGluMlp) {
  const int64_t T = 6, D = 10, I = 14;
  auto w = randn(3 * I * D, 5, "w", 0.3f), x = randn(T * D, 5, "x"), r = randn(T * D, 5, "r");
  std::vector<float> gw(w.size(), 0.f), y(T * D), gu(T * 2 * I), act(T * I), dx(T * D), scratch(T * 3 * I);
  model::MlpWeights mw{w.data(), w.data() + 2 * I * D};
  auto loss = [&] {
    model::mlp_forward(y.data(), 0.f, gu.data(), act.data(), x.data(), mw, T, D, I);
    return dot(y, r);
  };
  loss();
  model::mlp_backward(dx.data(), 0.f, {gw.data(), gw.data() + 2 * I * D}, r.data(), x.data(), gu.data(), act.data(),
                      mw, T, D, I, scratch.data());
  expect_grad_matches(loss, x.data(), dx.data(), x.size(), "mlp dx");
  expect_grad_matches(loss, w.data(), gw.data(), w.size(), "mlp dW (gate, up, down)", 1e-2, 2e-2, 96);
}

TEST(LayerGrad, CrossEntropy) {
  const int64_t T = 4, V = 9;
  auto z = randn(T * V, 6, "z", 2.f);
  std::vector<int64_t> tgt = {3, -1, 8, 0};
  std::vector<float> dz(T * V);
  auto loss = [&] { return kernels::cross_entropy(nullptr, z.data(), tgt.data(), T, V, 1.f) / 3.0; };
  kernels::cross_entropy(dz.data(), z.data(), tgt.data(), T, V, 1.f / 3.f);
  expect_grad_matches(loss, z.data(), dz.data(), z.size(), "ce dlogits", 1e-3, 1e-2, 36);
  for (int64_t i = 0; i < V; ++i) EXPECT_EQ(dz[V + i], 0.f);  // ignored row
  // Uniform logits: loss = log V.
  std::vector<float> u(V, 0.5f);
  int64_t t0 = 2;
  EXPECT_NEAR(kernels::cross_entropy(nullptr, u.data(), &t0, 1, V, 1.f), std::log(9.0), 1e-6);
}

// A full MoE block (router, top-k, experts, shared expert with sigmoid gate, or ungated as in
// DeepSeekMoE) and the router losses: gradients of CE-like probe + aux + z-loss against finite
// differences.
struct MoeFixture {
  int64_t T = 7, D = 8, E = 5, K = 2, I = 6, Is = 10;
  std::vector<float> router, experts, s_gu, s_down, s_gate;
  std::vector<float> g_router, g_experts, g_s_gu, g_s_down, g_s_gate;
  MoeFixture(bool norm_topk, bool shared_gate) : norm(norm_topk), gated(shared_gate) {
    router = randn(E * D, 7, "router", 1.0f);
    experts = randn(E * 3 * I * D, 7, "experts", 0.3f);
    s_gu = randn(2 * Is * D, 7, "s_gu", 0.3f);
    s_down = randn(D * Is, 7, "s_down", 0.3f);
    s_gate = randn(D, 7, "s_gate", 0.5f);
    for (auto* p : {&g_router, &g_experts, &g_s_gu, &g_s_down, &g_s_gate}) p->clear();
    g_router.assign(router.size(), 0.f);
    g_experts.assign(experts.size(), 0.f);
    g_s_gu.assign(s_gu.size(), 0.f);
    g_s_down.assign(s_down.size(), 0.f);
    g_s_gate.assign(s_gate.size(), 0.f);
  }
  bool norm, gated;
  moe::MoeLayer layer() {
    moe::MoeParams p{{router.data(), g_router.data()},
                     {experts.data(), g_experts.data()},
                     {s_gu.data(), g_s_gu.data()},
                     {s_down.data(), g_s_down.data()},
                     gated ? model::Param{s_gate.data(), g_s_gate.data()} : model::Param{}};
    return moe::MoeLayer(p, {D, E, K, I, Is, norm});
  }
};

void moe_grad_check(bool norm_topk, bool use_switch, bool gated = true) {
  MoeFixture f(norm_topk, gated);
  auto x = randn(f.T * f.D, 8, "x"), r = randn(f.T * f.D, 8, "r");
  std::vector<float> y(x.size()), dx(x.size());
  moe::MoeCache c;
  const double aux_coef = 0.3, z_coef = 0.05;
  auto objective = [&](moe::MoeCache* cache, std::vector<float>* dprob, float* zscale) {
    auto layer = f.layer();
    layer.forward(y.data(), cache, x.data(), f.T);
    std::vector<moe::RouterStats> st = {layer.stats(*cache)};
    std::vector<std::vector<float>> g;
    std::vector<float> zs;
    double aux = use_switch ? moe::switch_aux_loss(st, f.K, &g) : moe::hf_pooled_aux_loss(st, f.K, &g);
    double z = moe::router_z_loss(st, &zs);
    if (dprob) {
      dprob->resize(f.E);
      for (int64_t e = 0; e < f.E; ++e) (*dprob)[e] = static_cast<float>(aux_coef * g[0][e]);
      *zscale = static_cast<float>(z_coef * zs[0]);
    }
    return dot(y, r) + aux_coef * aux + z_coef * z;
  };
  auto loss = [&] {
    moe::MoeCache tmp;
    return objective(&tmp, nullptr, nullptr);
  };
  std::vector<float> dprob;
  float zscale = 0;
  objective(&c, &dprob, &zscale);
  f.layer().backward(dx.data(), r.data(), c, x.data(), dprob.data(), zscale);
  // The routing must be stable under the probes (no top-k flips): the check would then fail.
  expect_grad_matches(loss, x.data(), dx.data(), x.size(), "moe dx", 1e-3);
  expect_grad_matches(loss, f.router.data(), f.g_router.data(), f.router.size(), "moe dW_router", 1e-3);
  expect_grad_matches(loss, f.experts.data(), f.g_experts.data(), f.experts.size(), "moe experts", 1e-3, 2e-2, 96);
  expect_grad_matches(loss, f.s_gu.data(), f.g_s_gu.data(), f.s_gu.size(), "moe shared gate/up", 1e-3);
  expect_grad_matches(loss, f.s_down.data(), f.g_s_down.data(), f.s_down.size(), "moe shared down", 1e-3);
  if (gated) expect_grad_matches(loss, f.s_gate.data(), f.g_s_gate.data(), f.s_gate.size(), "moe shared gate", 1e-3);
  else EXPECT_EQ(*std::max_element(f.g_s_gate.begin(), f.g_s_gate.end()), 0.f);  // never touched
}

TEST(LayerGrad, MoeBlockTopkUnnormalisedHfAux) { moe_grad_check(false, false); }
TEST(LayerGrad, MoeBlockTopkNormalisedSwitchAux) { moe_grad_check(true, true); }
TEST(LayerGrad, MoeBlockUngatedSharedExpert) { moe_grad_check(false, false, /*gated=*/false); }

// Ungated vs gated on the same weights: the difference is exactly (1 - sigmoid(x . w_sg)) * shared(x).
TEST(Moe, UngatedSharedExpertIsAddedWhole) {
  MoeFixture gated(false, true), ungated(false, false);
  const int64_t T = gated.T, D = gated.D;
  auto x = randn(T * D, 9, "x");
  std::vector<float> yg(T * D), yu(T * D);
  moe::MoeCache cg, cu;
  gated.layer().forward(yg.data(), &cg, x.data(), T);
  ungated.layer().forward(yu.data(), &cu, x.data(), T);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i)
      EXPECT_NEAR(yu[t * D + i] - yg[t * D + i], (1.f - cg.s_gate[t]) * cg.s_out[t * D + i], 1e-5) << t << "," << i;
  EXPECT_TRUE(cu.s_out.empty());  // nothing kept for a gate gradient
}

TEST(Moe, RouterSoftmaxThenTopk) {
  const int64_t T = 3, D = 4, E = 6, K = 2;
  auto x = randn(T * D, 9, "x"), w = randn(E * D, 9, "w");
  moe::RouterState r, rn;
  moe::router_forward(&r, x.data(), w.data(), T, D, E, K, false);
  moe::router_forward(&rn, x.data(), w.data(), T, D, E, K, true);
  for (int64_t t = 0; t < T; ++t) {
    // softmax over all experts, then the k largest probabilities, unnormalised
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    const float* p = r.probs.data() + t * E;
    std::sort(order.begin(), order.end(), [p](int a, int b) { return p[a] > p[b]; });
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += p[e];
    EXPECT_NEAR(sum, 1.0, 1e-6);
    for (int64_t j = 0; j < K; ++j) {
      EXPECT_EQ(r.idx[t * K + j], order[j]);
      EXPECT_EQ(r.weights[t * K + j], p[order[j]]);
    }
    EXPECT_NEAR(rn.weights[t * K] + rn.weights[t * K + 1], 1.0, 1e-6);
    EXPECT_NEAR(rn.weights[t * K] / rn.weights[t * K + 1], p[order[0]] / p[order[1]], 1e-5);
  }
}

TEST(Moe, GroupedExpertsMatchSequentialOracle) {
  const int64_t T = 40, D = 16, E = 8, K = 3, I = 12;
  auto x = randn(T * D, 10, "x"), w = randn(E * 3 * I * D, 10, "w", 0.3f), wr = randn(E * D, 10, "wr", 2.f);
  std::vector<float> g(w.size());
  moe::RouterState r;
  moe::router_forward(&r, x.data(), wr.data(), T, D, E, K, false);
  // Force an expert to receive nothing: no token picks expert 5.
  for (auto& i : r.idx)
    if (i == 5) i = 4;  // may duplicate an expert within a token; dispatch must still be exact
  moe::DispatchPlan plan = moe::make_dispatch_plan(r.idx.data(), T, K, E);
  EXPECT_EQ(plan.counts[5], 0);
  EXPECT_EQ(std::accumulate(plan.counts.begin(), plan.counts.end(), int64_t{0}), T * K);
  std::vector<float> xp(T * K * D), yp(T * K * D), out(T * D), ref(T * D);
  moe::dispatch_rows(xp.data(), x.data(), plan, D);
  moe::ExpertStack s{w.data(), g.data(), E, D, I};
  moe::ExpertsCache c;
  moe::experts_forward(yp.data(), &c, xp.data(), s, plan);
  moe::combine_rows(out.data(), 0.f, yp.data(), r.weights.data(), plan, D);
  moe::experts_forward_oracle(ref.data(), x.data(), r.idx.data(), r.weights.data(), T, K, s);
  EXPECT_LT(test::rel_err(out.data(), ref.data(), out.size()), 1e-5);
}

TEST(Moe, AuxLossValuesOnKnownStatistics) {
  // Two layers, 4 experts, k = 2, 10 tokens each. Perfectly balanced routing and uniform
  // probabilities: HF pooled = k, Switch = 1.
  moe::RouterStats s;
  s.tokens = 10;
  s.counts = {5, 5, 5, 5};
  s.prob_sum = {2.5, 2.5, 2.5, 2.5};
  s.lse_sq_sum = 10 * 4.0;
  std::vector<moe::RouterStats> layers = {s, s};
  EXPECT_NEAR(moe::hf_pooled_aux_loss(layers, 2, nullptr), 2.0, 1e-12);
  EXPECT_NEAR(moe::switch_aux_loss(layers, 2, nullptr), 1.0, 1e-12);
  EXPECT_NEAR(moe::router_z_loss(layers, nullptr), 4.0, 1e-12);
  // Collapsed routing in layer 0 (all slots on experts 0 and 1, probs concentrated there),
  // balanced in layer 1: pooling over layers dilutes the imbalance.
  moe::RouterStats c = s;
  c.counts = {10, 10, 0, 0};
  c.prob_sum = {5, 5, 0, 0};
  layers = {c, s};
  // pooled: F = (15,15,5,5)/20, P = (7.5,7.5,2.5,2.5)/20 -> 4 * (2*0.75*0.375 + 2*0.25*0.125) = 2.5
  EXPECT_NEAR(moe::hf_pooled_aux_loss(layers, 2, nullptr), 2.5, 1e-12);
  // switch: layer 0 = 4 * (2 * 0.5 * 0.5) = 2, layer 1 = 1 -> mean 1.5
  EXPECT_NEAR(moe::switch_aux_loss(layers, 2, nullptr), 1.5, 1e-12);
}

}  // namespace
}  // namespace moekit
