// Finite-difference gradient checks for every layer's backward (the model and the MoE block on
// the CPU backend), the grouped-expert dispatcher and the capacity factor against the sequential
// oracle, and the routing variants (sigmoid scores, aux-loss-free expert bias). Loss probes are
// L = sum(r * y) with a fixed random r, so dL/dy = r and every output element contributes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/rmsnorm.h"
#include "kernels/matmul.h"
#include "kernels/rope.h"
#include "model/mlp.h"
#include "model/model.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "moe/router.h"
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

TEST(LayerGrad, SwiGluMlp) {
  const int64_t T = 6, D = 10, I = 14;
  auto w = randn(3 * I * D, 5, "w", 0.3f), x = randn(T * D, 5, "x"), r = randn(T * D, 5, "r");
  std::vector<float> gw(w.size(), 0.f), y(T * D), gu(T * 2 * I), act(T * I), dx(T * D), dact(T * I), dgu(T * 2 * I);
  const model::Param gate_up{w.data(), gw.data(), w.data()}, down{w.data() + 2 * I * D, gw.data() + 2 * I * D,
                                                                  w.data() + 2 * I * D};
  backend::Backend& be = backend::cpu();
  auto loss = [&] {
    model::mlp_forward(be, y.data(), 0.f, gu.data(), act.data(), x.data(), gate_up, down, T, D, I);
    return dot(y, r);
  };
  loss();
  model::mlp_backward(be, dx.data(), 0.f, gate_up, down, r.data(), x.data(), gu.data(), act.data(), dact.data(),
                      dgu.data(), T, D, I);
  expect_grad_matches(loss, x.data(), dx.data(), x.size(), "mlp dx");
  expect_grad_matches(loss, w.data(), gw.data(), w.size(), "mlp dW (gate, up, down)", 1e-2, 2e-2, 96);
}

// The whole model's backward (embedding, RMSNorms, attention with q/k/v bias, RoPE and GQA, the
// SwiGLU MLP, the untied LM head, cross-entropy) against finite differences of its loss, every
// parameter tensor probed.
TEST(LayerGrad, DenseModelEveryParameter) {
  config::ModelConfig c;
  c.model_type = "qwen2";
  c.vocab_size = 23;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.rope_theta = 100.0;
  model::Model m(c);
  m.params().init(3, 0.3);
  const int64_t B = 2, S = 5;
  std::vector<int64_t> in(B * S), tg(B * S);
  for (int64_t i = 0; i < B * S; ++i) {
    in[i] = (7 * i + 3) % c.vocab_size;
    tg[i] = (5 * i + 1) % c.vocab_size;
  }
  tg[4] = -1;  // an ignored target
  auto loss = [&] { return m.forward(in.data(), tg.data(), B, S, {}, false).total; };
  m.params().zero_grad();
  m.forward(in.data(), tg.data(), B, S, {});
  m.backward();
  for (const auto& s : m.params().specs()) {
    model::Param p = m.params().get(s.name);
    expect_grad_matches(loss, p.w, p.g, s.numel(), s.name, 1e-2, 2e-2, 12);
  }
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
  MoeFixture(bool norm_topk, bool shared_gate, bool shared = true) : norm(norm_topk), gated(shared_gate) {
    if (!shared) Is = 0;
    router = randn(E * D, 7, "router", 1.0f);
    experts = randn(E * 3 * I * D, 7, "experts", 0.3f);
    s_gu = randn(2 * Is * D, 7, "s_gu", 0.3f);
    s_down = randn(D * Is, 7, "s_down", 0.3f);
    s_gate = randn(D, 7, "s_gate", 0.5f);
    g_router.assign(router.size(), 0.f);
    g_experts.assign(experts.size(), 0.f);
    g_s_gu.assign(s_gu.size(), 0.f);
    g_s_down.assign(s_down.size(), 0.f);
    g_s_gate.assign(s_gate.size(), 0.f);
  }
  bool norm, gated;
  backend::ScoreFunction score = backend::ScoreFunction::kSoftmax;
  bool bias = false;
  static model::Param param(std::vector<float>& w, std::vector<float>& g) { return {w.data(), g.data(), w.data()}; }
  moe::MoeScratch scratch{backend::cpu()};
  std::unique_ptr<moe::MoeLayer> layer() {
    moe::MoeParams p;
    p.router = param(router, g_router);
    p.experts = param(experts, g_experts);
    if (Is > 0) {
      p.shared_gate_up = param(s_gu, g_s_gu);
      p.shared_down = param(s_down, g_s_down);
      if (gated) p.shared_gate = param(s_gate, g_s_gate);
    }
    moe::MoeDims d;
    d.hidden = D;
    d.experts = E;
    d.topk = K;
    d.inter = I;
    d.shared_inter = Is;
    d.norm_topk = norm;
    d.score = score;
    d.expert_bias = bias;
    return std::make_unique<moe::MoeLayer>(backend::cpu(), p, d,
                                           moe::make_local_dispatcher(backend::cpu(), E, D, scratch.dispatch), scratch);
  }
};

void moe_grad_check(bool norm_topk, bool use_switch, bool gated = true, bool sigmoid = false) {
  MoeFixture f(norm_topk, gated);
  if (sigmoid) f.score = backend::ScoreFunction::kSigmoid;
  auto x = randn(f.T * f.D, 8, "x"), r = randn(f.T * f.D, 8, "r");
  std::vector<float> y(x.size()), dx(x.size());
  const double aux_coef = 0.3, z_coef = sigmoid ? 0.0 : 0.05;
  auto layer = f.layer();
  auto objective = [&](std::vector<float>* dscore, float* zscale) {
    layer->forward(y.data(), x.data(), f.T, {});
    std::vector<moe::RouterStats> st = {layer->stats()};
    std::vector<std::vector<float>> g;
    std::vector<float> zs;
    double aux = use_switch ? moe::switch_aux_loss(st, f.K, &g) : moe::hf_pooled_aux_loss(st, f.K, &g);
    double z = moe::router_z_loss(st, &zs);
    if (dscore) {
      dscore->resize(f.E);
      for (int64_t e = 0; e < f.E; ++e) (*dscore)[e] = static_cast<float>(aux_coef * g[0][e]);
      *zscale = static_cast<float>(z_coef * zs[0]);
    }
    return dot(y, r) + aux_coef * aux + z_coef * z;
  };
  auto loss = [&] { return objective(nullptr, nullptr); };
  std::vector<float> dscore;
  float zscale = 0;
  objective(&dscore, &zscale);
  layer->backward(dx.data(), r.data(), x.data(), dscore, zscale);
  // The routing must be stable under the probes (no top-k flips): the check would then fail.
  expect_grad_matches(loss, x.data(), dx.data(), x.size(), "moe dx", 1e-3);
  expect_grad_matches(loss, f.router.data(), f.g_router.data(), f.router.size(), "moe dW_router", 1e-3);
  expect_grad_matches(loss, f.experts.data(), f.g_experts.data(), f.experts.size(), "moe experts", 1e-3, 2e-2, 96);
  expect_grad_matches(loss, f.s_gu.data(), f.g_s_gu.data(), f.s_gu.size(), "moe shared gate/up", 1e-3);
  expect_grad_matches(loss, f.s_down.data(), f.g_s_down.data(), f.s_down.size(), "moe shared down", 1e-3);
  // Ungated, the layer has no gate parameter (the fixture does not hand it one): its output is
  // checked by Moe.UngatedSharedExpertIsAddedWhole.
  if (gated) expect_grad_matches(loss, f.s_gate.data(), f.g_s_gate.data(), f.s_gate.size(), "moe shared gate", 1e-3);
}

TEST(LayerGrad, MoeBlockTopkUnnormalisedHfAux) { moe_grad_check(false, false); }
TEST(LayerGrad, MoeBlockTopkNormalisedSwitchAux) { moe_grad_check(true, true); }
TEST(LayerGrad, MoeBlockUngatedSharedExpert) { moe_grad_check(false, false, /*gated=*/false); }
TEST(LayerGrad, MoeBlockSigmoidScoresNormalised) { moe_grad_check(true, false, true, /*sigmoid=*/true); }
TEST(LayerGrad, MoeBlockSigmoidScoresUnnormalised) { moe_grad_check(false, true, true, /*sigmoid=*/true); }

// Ungated vs gated on the same weights: the difference is exactly (1 - sigmoid(x . w_sg)) * shared(x).
TEST(Moe, UngatedSharedExpertIsAddedWhole) {
  MoeFixture gated(false, true), ungated(false, false);
  const int64_t T = gated.T, D = gated.D, Is = gated.Is;
  auto x = randn(T * D, 9, "x");
  std::vector<float> yg(T * D), yu(T * D), s(T * D), gu(T * 2 * Is), act(T * Is);
  gated.layer()->forward(yg.data(), x.data(), T, {});
  ungated.layer()->forward(yu.data(), x.data(), T, {});
  model::mlp_forward(backend::cpu(), s.data(), 0.f, gu.data(), act.data(), x.data(),
                     MoeFixture::param(gated.s_gu, gated.g_s_gu), MoeFixture::param(gated.s_down, gated.g_s_down), T,
                     D, Is);
  for (int64_t t = 0; t < T; ++t) {
    double a = 0;
    for (int64_t i = 0; i < D; ++i) a += static_cast<double>(x[t * D + i]) * gated.s_gate[i];
    const double g = 1.0 / (1.0 + std::exp(-a));
    for (int64_t i = 0; i < D; ++i)
      EXPECT_NEAR(yu[t * D + i] - yg[t * D + i], (1.0 - g) * s[t * D + i], 1e-5) << t << "," << i;
  }
}

// The router kernels on logits: softmax over all experts (or sigmoid), top-k by score + bias,
// weights from the scores alone.
std::vector<float> logits_of(const std::vector<float>& x, const std::vector<float>& w, int64_t T, int64_t D,
                             int64_t E) {
  std::vector<float> z(T * E);
  kernels::matmul_nt(z.data(), x.data(), w.data(), T, E, D);
  return z;
}

TEST(Moe, RouterSoftmaxThenTopk) {
  const int64_t T = 3, D = 4, E = 6, K = 2;
  auto x = randn(T * D, 9, "x"), w = randn(E * D, 9, "w");
  const std::vector<float> z = logits_of(x, w, T, D, E);
  std::vector<float> p(T * E), lse(T), wt(T * K), pn(T * E), lsen(T), wtn(T * K);
  std::vector<int32_t> idx(T * K), idxn(T * K);
  moe::router_forward_cpu(p.data(), lse.data(), idx.data(), wt.data(), z.data(), nullptr, T, E, K, false, false);
  moe::router_forward_cpu(pn.data(), lsen.data(), idxn.data(), wtn.data(), z.data(), nullptr, T, E, K, true, false);
  for (int64_t t = 0; t < T; ++t) {
    // softmax over all experts, then the k largest probabilities, unnormalised
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    const float* pt = p.data() + t * E;
    std::sort(order.begin(), order.end(), [pt](int a, int b) { return pt[a] > pt[b]; });
    double sum = 0, lse_ref = 0;
    for (int64_t e = 0; e < E; ++e) {
      sum += pt[e];
      lse_ref += std::exp(static_cast<double>(z[t * E + e]));
    }
    EXPECT_NEAR(sum, 1.0, 1e-6);
    EXPECT_NEAR(lse[t], std::log(lse_ref), 1e-5);
    for (int64_t j = 0; j < K; ++j) {
      EXPECT_EQ(idx[t * K + j], order[j]);
      EXPECT_EQ(wt[t * K + j], pt[order[j]]);
    }
    EXPECT_NEAR(wtn[t * K] + wtn[t * K + 1], 1.0, 1e-6);
    EXPECT_NEAR(wtn[t * K] / wtn[t * K + 1], pt[order[0]] / pt[order[1]], 1e-5);
  }
}

// DeepSeek-V3 routing: sigmoid scores; the bias decides which experts, never the weights.
TEST(Moe, RouterSigmoidBiasShiftsSelectionNotWeights) {
  const int64_t T = 5, D = 4, E = 6, K = 2;
  auto x = randn(T * D, 12, "x"), w = randn(E * D, 12, "w");
  const std::vector<float> z = logits_of(x, w, T, D, E);
  // A large bias on expert 5 and a large negative one on every token's best unbiased expert.
  std::vector<float> s(T * E), lse(T), wt(T * K), bias(E, 0.f);
  std::vector<int32_t> idx(T * K);
  bias[5] = 10.f;
  moe::router_forward_cpu(s.data(), lse.data(), idx.data(), wt.data(), z.data(), bias.data(), T, E, K, true, true);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    const float* st = s.data() + t * E;
    for (int64_t e = 0; e < E; ++e) EXPECT_FLOAT_EQ(st[e], 1.f / (1.f + std::exp(-z[t * E + e])));
    std::sort(order.begin(), order.end(), [&](int a, int b) { return st[a] + bias[a] > st[b] + bias[b]; });
    EXPECT_EQ(idx[t * K], 5) << "the biased expert is always chosen";
    EXPECT_EQ(idx[t * K + 1], order[1]);
    // Weights: the unbiased scores of the chosen experts, normalised.
    const float sum = st[idx[t * K]] + st[idx[t * K + 1]];
    EXPECT_FLOAT_EQ(wt[t * K], st[idx[t * K]] / sum);
    EXPECT_FLOAT_EQ(wt[t * K + 1], st[idx[t * K + 1]] / sum);
  }
}

TEST(Moe, GroupedExpertsMatchSequentialOracle) {
  const int64_t T = 40, D = 16, E = 8, K = 3, I = 12;
  auto x = randn(T * D, 10, "x"), w = randn(E * 3 * I * D, 10, "w", 0.3f), wr = randn(E * D, 10, "wr", 2.f);
  std::vector<float> g(w.size());
  const std::vector<float> z = logits_of(x, wr, T, D, E);
  std::vector<float> p(T * E), lse(T), wt(T * K);
  std::vector<int32_t> idx(T * K);
  moe::router_forward_cpu(p.data(), lse.data(), idx.data(), wt.data(), z.data(), nullptr, T, E, K, false, false);
  // Force an expert to receive nothing: no token picks expert 5.
  for (auto& i : idx)
    if (i == 5) i = 4;  // may duplicate an expert within a token; dispatch must still be exact
  moe::ExpertStack s{w.data(), g.data(), E, D, I};
  // Dropless, then with capacities that drop pairs (the dispatcher and the oracle decide which
  // pairs an expert serves independently: first come, in token order).
  for (int64_t capacity : {int64_t{-1}, int64_t{9}, int64_t{3}, int64_t{0}}) {
    std::vector<int32_t> row_of(T * K), token_of(T * K);
    const std::vector<int64_t> chosen = moe::dispatch_plan_cpu(row_of.data(), token_of.data(), idx.data(), T, K, E,
                                                               capacity);
    EXPECT_EQ(chosen[5], 0);
    EXPECT_EQ(std::accumulate(chosen.begin(), chosen.end(), int64_t{0}), T * K);
    std::vector<int64_t> kept = chosen;
    int64_t dropped = 0;
    for (auto& c : kept) {
      if (capacity >= 0 && c > capacity) {
        dropped += c - capacity;
        c = capacity;
      }
    }
    if (capacity == 3) EXPECT_GT(dropped, 0) << "the test must drop pairs";
    EXPECT_EQ(std::count(row_of.begin(), row_of.end(), -1), dropped);
    const int64_t R = T * K - dropped;
    std::vector<float> xp(std::max<int64_t>(R, 1) * D), yp(xp.size()), gu(std::max<int64_t>(R, 1) * 2 * I),
        act(std::max<int64_t>(R, 1) * I), out(T * D), ref(T * D);
    moe::gather_rows_cpu(xp.data(), x.data(), token_of.data(), R, D);
    moe::experts_forward_cpu(yp.data(), gu.data(), act.data(), xp.data(), s, kept.data());
    moe::combine_rows_cpu(out.data(), 0.f, yp.data(), wt.data(), row_of.data(), T, K, D);
    moe::experts_forward_oracle(ref.data(), x.data(), idx.data(), wt.data(), T, K, s, capacity);
    EXPECT_LT(test::rel_err(out.data(), ref.data(), out.size()), 1e-5) << "capacity " << capacity;
  }
}

// ceil(factor * T * k / E), dropless for a factor <= 0 or NaN, and never above T: an expert sees
// each token at most once, and a huge factor must not overflow the conversion.
TEST(Moe, ExpertCapacityFormulaAndBounds) {
  EXPECT_EQ(moe::expert_capacity(30, 4, 8, 1.0), 15);
  EXPECT_EQ(moe::expert_capacity(30, 4, 8, 1.25), 19);  // ceil(18.75)
  EXPECT_EQ(moe::expert_capacity(30, 4, 8, 0.0), -1);
  EXPECT_EQ(moe::expert_capacity(30, 4, 8, -2.0), -1);
  EXPECT_EQ(moe::expert_capacity(30, 4, 8, std::nan("")), -1);
  EXPECT_EQ(moe::expert_capacity(30, 4, 8, 2.0), 30);   // 30 = T, not 30.0 rounded from above
  EXPECT_EQ(moe::expert_capacity(30, 4, 8, 1e300), 30);
}

// The MoE block with a capacity factor against the oracle: routed output only (no shared
// expert), the capacity ceil(factor * T * k / E) applied to this forward's pairs.
TEST(Moe, CapacityFactorDropsPairsAsTheOracle) {
  MoeFixture f(false, true, /*shared=*/false);
  f.T = 30;
  auto x = randn(f.T * f.D, 13, "x");
  auto layer = f.layer();
  for (double factor : {0.0, 1.0, 0.5}) {
    std::vector<float> y(f.T * f.D), ref(f.T * f.D);
    layer->forward(y.data(), x.data(), f.T, {factor});
    const int64_t cap = moe::expert_capacity(f.T, f.K, f.E, factor);
    EXPECT_EQ(cap, factor > 0 ? static_cast<int64_t>(std::ceil(factor * f.T * f.K / f.E)) : -1);
    // The same routing, computed independently.
    const std::vector<float> z = logits_of(x, f.router, f.T, f.D, f.E);
    std::vector<float> p(f.T * f.E), lse(f.T), wt(f.T * f.K);
    std::vector<int32_t> idx(f.T * f.K);
    moe::router_forward_cpu(p.data(), lse.data(), idx.data(), wt.data(), z.data(), nullptr, f.T, f.E, f.K, false,
                            false);
    moe::ExpertStack s{f.experts.data(), nullptr, f.E, f.D, f.I};
    moe::experts_forward_oracle(ref.data(), x.data(), idx.data(), wt.data(), f.T, f.K, s, cap);
    EXPECT_LT(test::rel_err(y.data(), ref.data(), y.size()), 1e-5) << "factor " << factor;
    if (factor == 0.5) EXPECT_GT(layer->dropped(), 0);
    if (factor == 0.0) EXPECT_EQ(layer->dropped(), 0);
  }
}

// Gradients with dropped pairs: finite differences of the block's output probe.
TEST(LayerGrad, MoeBlockWithCapacityDrops) {
  MoeFixture f(true, true);
  f.T = 12;
  auto x = randn(f.T * f.D, 14, "x"), r = randn(f.T * f.D, 14, "r");
  std::vector<float> y(x.size()), dx(x.size());
  auto layer = f.layer();
  const moe::MoeOptions opt{0.5};
  auto loss = [&] {
    layer->forward(y.data(), x.data(), f.T, opt);
    return dot(y, r);
  };
  loss();
  ASSERT_GT(layer->dropped(), 0);
  layer->backward(dx.data(), r.data(), x.data(), {}, 0.f);
  expect_grad_matches(loss, x.data(), dx.data(), x.size(), "moe dx (drops)", 1e-3);
  expect_grad_matches(loss, f.router.data(), f.g_router.data(), f.router.size(), "moe dW_router (drops)", 1e-3);
  expect_grad_matches(loss, f.experts.data(), f.g_experts.data(), f.experts.size(), "moe experts (drops)", 1e-3,
                      2e-2, 96);
}

// Aux-loss-free balancing on a router skewed towards two experts (DeepSeek-V3: sigmoid scores,
// bias rate 1e-3): the bias update, applied from the observed load, evens the load out over
// the steps without touching any weight. The rule is applied here as its definition,
// b_e += rate * sign(mean - load_e); Model::update_expert_bias is checked against it below.
TEST(Moe, ExpertBiasUpdateBalancesTheLoad) {
  MoeFixture f(true, true, /*shared=*/false);
  f.T = 64;
  f.E = 8;
  f.bias = true;
  f.score = backend::ScoreFunction::kSigmoid;
  f.router = randn(f.E * f.D, 15, "router", 0.3f);
  for (int64_t i = 0; i < f.D; ++i) f.router[0 * f.D + i] += 0.4f, f.router[1 * f.D + i] += 0.4f;
  f.experts = randn(f.E * 3 * f.I * f.D, 15, "experts", 0.3f);
  f.g_router.assign(f.router.size(), 0.f);
  f.g_experts.assign(f.experts.size(), 0.f);
  auto x = randn(f.T * f.D, 15, "x", 1.f, 0.3f);
  auto layer = f.layer();
  std::vector<float> y(f.T * f.D);
  const double mean = static_cast<double>(f.T * f.K) / f.E;
  auto max_over_mean = [&] {
    const auto& c = layer->chosen_counts();
    return static_cast<double>(*std::max_element(c.begin(), c.end())) / mean;
  };
  layer->forward(y.data(), x.data(), f.T, {});
  const double before = max_over_mean();
  EXPECT_GT(before, 2.5) << "the router must start skewed";
  const std::vector<float> router0 = f.router;
  std::vector<float> bias(f.E, 0.f);
  const double rate = 1e-3;
  double late = 0;
  const int steps = 1500, window = 300;
  for (int step = 0; step < steps; ++step) {
    layer->forward(y.data(), x.data(), f.T, {});
    if (step >= steps - window) late += max_over_mean() / window;
    const auto& c = layer->chosen_counts();
    for (int64_t e = 0; e < f.E; ++e) bias[e] += static_cast<float>(rate * ((mean > c[e]) - (mean < c[e])));
    layer->set_expert_bias(bias);
  }
  EXPECT_LT(late, 1.5) << "max/mean load " << before << " at the start";
  EXPECT_EQ(f.router, router0);
}

// Model::update_expert_bias is the rule above, layer by layer, from the step's load (the
// trainer passes the load over the global batch, so every rank applies the same update).
TEST(Moe, ModelExpertBiasUpdateFollowsTheRule) {
  auto cfg = config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/tiny-moe.yaml");
  cfg.moe_router_enable_expert_bias = true;
  cfg.mlp_only_layers = {1};
  model::Model m(cfg);
  const int64_t E = cfg.num_experts, L = cfg.num_hidden_layers;
  std::vector<std::vector<float>> b = m.expert_bias();
  ASSERT_EQ(static_cast<int64_t>(b.size()), L);
  EXPECT_TRUE(b[1].empty()) << "a dense layer has no bias";
  std::vector<std::vector<int64_t>> load(L);
  for (int64_t l = 0; l < L; ++l) {
    if (l == 1) continue;
    EXPECT_EQ(b[l], std::vector<float>(E, 0.f));
    for (int64_t e = 0; e < E; ++e) load[l].push_back((e * 7 + l) % 5);  // some at, above, below the mean
  }
  m.update_expert_bias(load, 0.25);
  m.update_expert_bias(load, 0.25);
  const auto after = m.expert_bias();
  for (int64_t l = 0; l < L; ++l) {
    if (l == 1) continue;
    double mean = 0;
    for (int64_t x : load[l]) mean += x;
    mean /= E;
    for (int64_t e = 0; e < E; ++e) {
      const float want = load[l][e] < mean ? 0.5f : load[l][e] > mean ? -0.5f : 0.f;
      EXPECT_EQ(after[l][e], want) << "layer " << l << " expert " << e;
    }
  }
  EXPECT_THROW(m.update_expert_bias(std::vector<std::vector<int64_t>>(L - 1), 0.1), Error);
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
