// Every op of the CUDA backend against the CPU backend (the reference) on the same inputs, through
// the Backend interface the model uses (ggml's test-backend-ops idea). Each test runs with f32
// activations (tight tolerances: the same math in the same precision, only the summation order
// differs) and bf16 activations (inputs rounded to bf16 for the CPU reference too; tolerance
// 2e-2 relative to the largest element). Outputs start as NaN, so an element an op fails to
// write fails the comparison. Skips without CUDA or without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/rope.h"
#include "optim/adamw_math.h"
#include "optim/optim.h"

namespace moekit {

// Test names print the activation type, not its bytes.
void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

using backend::Gemm;
using backend::GemmOp;
using test::Backends;
using test::Mirror;
using test::MirrorInt;
using test::mirror_err;
using test::randn;
using test::tol;

class BackendOp : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!built_with_cuda()) GTEST_SKIP() << "built without CUDA (MOEKIT_CUDA=OFF)";
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    b_ = std::make_unique<Backends>(GetParam());
  }
  Backends& b() { return *b_; }
  DType act() const { return b_->act; }
  Mirror typed(const std::vector<float>& v) { return Mirror(*b_, v, true); }
  Mirror f32(const std::vector<float>& v) { return Mirror(*b_, v, false); }
  Mirror out(size_t n, bool typed_out = true) { return Mirror::poisoned(*b_, n, typed_out); }
  std::unique_ptr<Backends> b_;
};

INSTANTIATE_TEST_SUITE_P(Act, BackendOp, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return info.param == DType::kF32 ? "f32" : "bf16"; });

TEST_P(BackendOp, GemmFormsWithAlphaBetaAndF32Outputs) {
  const int64_t M = 37, N = 53, K = 71;
  const auto a_nt = randn(M * K, 1, "a"), b_nt = randn(N * K, 1, "b"), a_tn = randn(K * M, 1, "at");
  const auto b_nn = randn(K * N, 1, "bn"), c0 = randn(M * N, 1, "c");
  for (GemmOp op : {GemmOp::kNT, GemmOp::kNN, GemmOp::kTN}) {
    const auto& av = op == GemmOp::kTN ? a_tn : a_nt;
    const auto& bv = op == GemmOp::kNT ? b_nt : b_nn;
    Mirror A = typed(av), B = typed(bv);
    for (DType c_type : {act(), DType::kF32}) {
      if (act() == DType::kF32 && c_type != DType::kF32) continue;
      Mirror C(b(), c0, c_type != DType::kF32);
      Gemm g;
      g.op = op;
      g.m = M;
      g.n = N;
      g.k = K;
      g.alpha = 0.5f;
      g.beta = 0.75f;
      b().cpu.gemm(g, C.cpu(), A.cpu(), B.cpu());
      g.ab = act();
      g.c = c_type;
      b().gpu->gemm(g, C.gpu(), A.gpu(), B.gpu());
      EXPECT_LT(mirror_err(C), tol(act(), 1e-5)) << "op " << static_cast<int>(op) << " C " << dtype_name(c_type);
    }
  }
}

TEST_P(BackendOp, BiasAddAndGradient) {
  const int64_t R = 300, C = 45;  // rows over several partial-sum blocks
  Mirror y = typed(randn(R * C, 2, "y")), bias = f32(randn(C, 2, "bias")), dy = typed(randn(R * C, 2, "dy"));
  Mirror db = f32(randn(C, 2, "db0"));
  b().cpu.add_bias(y.cpu(), bias.cpu(), R, C);
  b().gpu->add_bias(y.gpu(), bias.gpu_f32(), R, C);
  b().cpu.bias_grad(db.cpu(), dy.cpu(), R, C);
  b().gpu->bias_grad(db.gpu_f32(), dy.gpu(), R, C);
  EXPECT_LT(mirror_err(y), tol(act(), 1e-6));
  EXPECT_LT(mirror_err(db), 1e-5);  // f32 accumulation whatever the activations
}

TEST_P(BackendOp, ElementwiseCastsAndReductions) {
  const int64_t n = 100003;
  Mirror a = typed(randn(n, 3, "a")), c = typed(randn(n, 3, "c")), o = out(n);
  b().cpu.add(o.cpu(), a.cpu(), c.cpu(), n);
  b().gpu->add(o.gpu(), a.gpu(), c.gpu(), n);
  EXPECT_LT(mirror_err(o), tol(act(), 0));
  // act <-> f32 round trips: exact on both sides (RNE, the same bits as core/dtype.h).
  const auto v = randn(n, 3, "v", 10.f);
  Mirror wide = out(n, false), narrow = typed(v);
  b().gpu->to_f32(wide.gpu_f32(), narrow.gpu(), n);
  EXPECT_EQ(wide.gpu_values(), test::rounded(v, act()));
  Mirror src = f32(v), dst = out(n);
  b().gpu->from_f32(dst.gpu(), src.gpu_f32(), n);
  EXPECT_EQ(dst.gpu_values(), test::rounded(v, act()));
  // Scale, sums of squares (f64, fixed order), non-finite counts and the fp16 rounding.
  Mirror g = f32(randn(n, 3, "g"));
  b().cpu.scale(g.cpu(), 0.37f, n);
  b().gpu->scale(g.gpu_f32(), 0.37f, n);
  EXPECT_EQ(g.gpu_values(), g.cpu_values());
  const double sc = b().cpu.sum_squares(g.cpu(), n), sg = b().gpu->sum_squares(g.gpu_f32(), n);
  EXPECT_NEAR(sg, sc, 1e-12 * sc);
  EXPECT_EQ(b().gpu->sum_squares(g.gpu_f32(), n), sg) << "the same bits run to run";
  std::vector<float> bad = randn(n, 4, "bad");
  bad[5] = INFINITY;
  bad[77] = std::nanf("");
  bad[n - 1] = -INFINITY;
  Mirror bm = f32(bad);
  EXPECT_EQ(b().gpu->count_nonfinite(bm.gpu_f32(), n), 3);
  EXPECT_EQ(b().cpu.count_nonfinite(bm.cpu(), n), 3);
  std::vector<float> big = randn(n, 5, "big", 1e3f);
  Mirror h = f32(big);
  EXPECT_EQ(b().gpu->round_through_f16(h.gpu_f32(), 16.f, n), b().cpu.round_through_f16(h.cpu(), 16.f, n));
  EXPECT_EQ(h.gpu_values(), h.cpu_values());
  big[9] = 1e6f;  // 1.6e7 after the scale: beyond fp16's range
  Mirror h2 = f32(big);
  EXPECT_TRUE(b().gpu->round_through_f16(h2.gpu_f32(), 16.f, n));
}

TEST_P(BackendOp, RmsNormForwardBackward) {
  const int64_t R = 77, D = 1000;
  Mirror x = typed(randn(R * D, 1, "x")), dy = typed(randn(R * D, 2, "dy"));
  Mirror w = f32(randn(D, 3, "w", 0.1f, 1.f)), y = out(R * D), rstd = out(R, false), dx = out(R * D);
  Mirror dw = f32(std::vector<float>(D, 0.5f));
  for (auto* be : {&b().cpu, b().gpu.get()}) {
    const bool g = be != &b().cpu;
    be->rmsnorm_forward(g ? y.gpu() : y.cpu(), g ? rstd.gpu_f32() : rstd.cpu(), g ? x.gpu() : x.cpu(),
                        g ? w.gpu_f32() : w.cpu(), R, D, 1e-6f);
    be->rmsnorm_backward(g ? dx.gpu() : dx.cpu(), g ? dw.gpu_f32() : dw.cpu(), g ? dy.gpu() : dy.cpu(),
                         g ? x.gpu() : x.cpu(), g ? w.gpu_f32() : w.cpu(), g ? rstd.gpu_f32() : rstd.cpu(), R, D,
                         false);
  }
  EXPECT_LT(mirror_err(y), tol(act(), 1e-6));
  EXPECT_LT(mirror_err(rstd), 1e-6);
  EXPECT_LT(mirror_err(dx), tol(act(), 1e-5));
  EXPECT_LT(mirror_err(dw), 1e-5);
}

TEST_P(BackendOp, RopeForwardAndInverse) {
  const int64_t B = 2, S = 37, Hh = 3, d = 64;
  std::vector<float> cos, sin;
  kernels::rope_tables(&cos, &sin, S, d, 1e6);
  Mirror c = f32(cos), s = f32(sin);
  for (bool inverse : {false, true}) {
    Mirror x = typed(randn(B * S * Hh * d, 4, "x"));
    b().cpu.rope(x.cpu(), c.cpu(), s.cpu(), B, S, Hh, d, inverse);
    b().gpu->rope(x.gpu(), c.gpu_f32(), s.gpu_f32(), B, S, Hh, d, inverse);
    EXPECT_LT(mirror_err(x), tol(act(), 1e-6)) << (inverse ? "inverse" : "forward");
  }
}

TEST_P(BackendOp, SwiGluForwardBackward) {
  const int64_t R = 19, W = 333;
  Mirror gu = typed(randn(R * 2 * W, 2, "gu")), dh = typed(randn(R * W, 3, "dh")), h = out(R * W),
         dgu = out(R * 2 * W);
  b().cpu.swiglu_forward(h.cpu(), gu.cpu(), R, W);
  b().gpu->swiglu_forward(h.gpu(), gu.gpu(), R, W);
  b().cpu.swiglu_backward(dgu.cpu(), dh.cpu(), gu.cpu(), R, W);
  b().gpu->swiglu_backward(dgu.gpu(), dh.gpu(), gu.gpu(), R, W);
  EXPECT_LT(mirror_err(h), tol(act(), 1e-6));
  EXPECT_LT(mirror_err(dgu), tol(act(), 1e-6));
}

TEST_P(BackendOp, EmbeddingGatherAndScatter) {
  const int64_t V = 50, H = 96, T = 41;
  std::vector<int64_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = (t * 7) % 13;  // repeated ids: the scatter must add them
  MirrorInt<int64_t> id(b(), ids);
  Mirror table = f32(randn(V * H, 6, "table")), x = out(T * H), dx = typed(randn(T * H, 6, "dx"));
  Mirror dtable = f32(std::vector<float>(V * H, 0.25f));
  b().cpu.embedding_forward(x.cpu(), table.cpu(), id.cpu(), T, H);
  b().gpu->embedding_forward(x.gpu(), table.gpu_f32(), id.gpu(), T, H);
  b().cpu.embedding_backward(dtable.cpu(), dx.cpu(), id.cpu(), T, H);
  b().gpu->embedding_backward(dtable.gpu_f32(), dx.gpu(), id.gpu(), T, H);
  EXPECT_LT(mirror_err(x), tol(act(), 0));
  EXPECT_LT(mirror_err(dtable), 1e-6);
}

TEST_P(BackendOp, CrossEntropyLossAndGradientInPlace) {
  const int64_t R = 9, V = 5000;
  std::vector<int64_t> tg(R);
  for (int64_t t = 0; t < R; ++t) tg[t] = (t * 977) % V;
  tg[4] = -1;  // not counted: zero loss and zero gradient
  MirrorInt<int64_t> t(b(), tg);
  Mirror z = typed(randn(R * V, 5, "z", 3.f));
  const double lc = b().cpu.cross_entropy(z.cpu(), z.cpu(), t.cpu(), R, V, 0.125f);
  const double lg = b().gpu->cross_entropy(z.gpu(), z.gpu(), t.gpu(), R, V, 0.125f);
  EXPECT_NEAR(lg, lc, 1e-5 * lc);
  EXPECT_LT(mirror_err(z), tol(act(), 1e-5));  // the logits turned into their gradient, in place
  const std::vector<float> g = z.gpu_values();
  for (int64_t i = 0; i < V; ++i) ASSERT_EQ(g[4 * V + i], 0.f) << "ignored row";
}

TEST_P(BackendOp, SigmoidGateForwardBackward) {
  const int64_t T = 33, H = 200;
  Mirror y = typed(randn(T * H, 7, "y")), gate = f32(randn(T, 7, "gate")), s = typed(randn(T * H, 7, "s"));
  Mirror dy = typed(randn(T * H, 7, "dy")), ds = out(T * H), da = out(T);
  b().cpu.sigmoid_gate_forward(y.cpu(), gate.cpu(), s.cpu(), T, H);
  b().gpu->sigmoid_gate_forward(y.gpu(), gate.gpu_f32(), s.gpu(), T, H);
  b().cpu.sigmoid_gate_backward(ds.cpu(), da.cpu(), dy.cpu(), s.cpu(), gate.cpu(), T, H);
  b().gpu->sigmoid_gate_backward(ds.gpu(), da.gpu(), dy.gpu(), s.gpu(), gate.gpu_f32(), T, H);
  EXPECT_LT(mirror_err(gate), 1e-6);
  EXPECT_LT(mirror_err(y), tol(act(), 1e-6));
  EXPECT_LT(mirror_err(ds), tol(act(), 1e-6));
  EXPECT_LT(mirror_err(da), tol(act(), 1e-5));
}

// Both attention implementations (the cuBLAS GEMM path and the plain kernels) for MHA, GQA and
// MQA, over sequences longer than one warp's keys.
TEST_P(BackendOp, AttentionGemmAndPlainForMhaGqaMqa) {
  for (const char* impl : {"gemm", "plain"}) {
    setenv("MOEKIT_CUDA_ATTENTION", impl, 1);
    Backends bb(act());
    unsetenv("MOEKIT_CUDA_ATTENTION");
    for (int64_t kv : {int64_t{4}, int64_t{2}, int64_t{1}}) {
      const backend::AttnShape s{2, 70, 4, kv, 64};
      const int64_t T = s.batch * s.seq, qd = s.heads * s.head_dim, kvd = kv * s.head_dim;
      Mirror q(bb, randn(T * qd, 8, "q"), true), k(bb, randn(T * kvd, 8, "k"), true), v(bb, randn(T * kvd, 8, "v"), true);
      Mirror o = Mirror::poisoned(bb, T * qd, true), dout(bb, randn(T * qd, 8, "do"), true);
      Mirror dq = Mirror::poisoned(bb, T * qd, true), dk = Mirror::poisoned(bb, T * kvd, true),
             dv = Mirror::poisoned(bb, T * kvd, true);
      Mirror cs = Mirror::poisoned(bb, bb.cpu.attention_saved_floats(s), false);
      Mirror gs = Mirror::poisoned(bb, bb.gpu->attention_saved_floats(s), false);
      bb.cpu.attention_forward(o.cpu(), cs.cpu(), q.cpu(), k.cpu(), v.cpu(), s);
      bb.gpu->attention_forward(o.gpu(), gs.gpu_f32(), q.gpu(), k.gpu(), v.gpu(), s);
      bb.cpu.attention_backward(dq.cpu(), dk.cpu(), dv.cpu(), dout.cpu(), o.cpu(), cs.cpu(), q.cpu(), k.cpu(), v.cpu(),
                                s);
      bb.gpu->attention_backward(dq.gpu(), dk.gpu(), dv.gpu(), dout.gpu(), o.gpu(), gs.gpu_f32(), q.gpu(), k.gpu(),
                                 v.gpu(), s);
      const std::string what = std::string(impl) + " kv_heads " + std::to_string(kv);
      EXPECT_LT(mirror_err(o), tol(act(), 1e-5)) << what;
      EXPECT_LT(mirror_err(dq), tol(act(), 1e-4)) << what;
      EXPECT_LT(mirror_err(dk), tol(act(), 1e-4)) << what;
      EXPECT_LT(mirror_err(dv), tol(act(), 1e-4)) << what;
    }
  }
}

// Router scores, top-k and weights for every routing variant, its backward, and the aux
// statistics.
TEST_P(BackendOp, RouterVariantsForwardBackwardAndStats) {
  const int64_t T = 300, E = 60, K = 4;
  for (auto score : {backend::ScoreFunction::kSoftmax, backend::ScoreFunction::kSigmoid})
    for (bool norm : {false, true})
      for (bool with_bias : {false, true}) {
        const backend::RouterSpec r{E, K, norm, score};
        Mirror logits = f32(randn(T * E, 9, "logits", 2.f)), bias = f32(randn(E, 9, "bias", 0.3f));
        Mirror sc = out(T * E, false), lse = out(T, false), w = out(T * K, false);
        MirrorInt<int32_t> idx(b(), std::vector<int32_t>(T * K, -7));
        b().cpu.router_forward(sc.cpu(), lse.cpu(), idx.cpu(), w.cpu(), logits.cpu(), with_bias ? bias.cpu() : nullptr, r,
                               T);
        b().gpu->router_forward(sc.gpu_f32(), lse.gpu_f32(), idx.gpu(), w.gpu_f32(), logits.gpu_f32(),
                                with_bias ? bias.gpu_f32() : nullptr, r, T);
        const std::string what = std::string(score == backend::ScoreFunction::kSigmoid ? "sigmoid" : "softmax") +
                                 (norm ? " norm" : "") + (with_bias ? " bias" : "");
        EXPECT_EQ(idx.gpu_values(), idx.cpu_values()) << what;
        EXPECT_LT(mirror_err(sc), 1e-6) << what;
        EXPECT_LT(mirror_err(lse), 1e-6) << what;
        EXPECT_LT(mirror_err(w), 1e-6) << what;
        Mirror dw = f32(randn(T * K, 10, "dw")), dscore = f32(randn(E, 10, "dscore", 0.01f)), dz = out(T * E);
        const float z = score == backend::ScoreFunction::kSoftmax ? 1e-3f : 0.f;
        b().cpu.router_backward(dz.cpu(), sc.cpu(), lse.cpu(), idx.cpu(), w.cpu(), dw.cpu(), dscore.cpu(), z, r, T);
        b().gpu->router_backward(dz.gpu(), sc.gpu_f32(), lse.gpu_f32(), idx.gpu(), w.gpu_f32(), dw.gpu_f32(),
                                 dscore.gpu_f32(), z, r, T);
        EXPECT_LT(mirror_err(dz), tol(act(), 1e-5)) << what;
        std::vector<double> pc(E), pg(E);
        double qc = 0, qg = 0;
        b().cpu.router_stats(pc.data(), &qc, sc.cpu(), lse.cpu(), T, E);
        b().gpu->router_stats(pg.data(), &qg, sc.gpu_f32(), lse.gpu_f32(), T, E);
        for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(pg[e], pc[e], 1e-9 * std::max(1.0, pc[e])) << what;
        EXPECT_NEAR(qg, qc, 1e-9 * qc) << what;
      }
}

// The local dispatch plan (dropless and with a capacity that drops pairs), the row permutations
// and the weighted combine with their backwards.
TEST_P(BackendOp, DispatchPlanPermuteAndCombineWithDrops) {
  const int64_t T = 257, K = 4, E = 16, H = 48;
  std::vector<int32_t> idx(T * K);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < K; ++j) idx[t * K + j] = static_cast<int32_t>((t * 3 + j * 5 + (t % 7 == 0 ? 1 : 0)) % 15);
  MirrorInt<int32_t> id(b(), idx);
  for (int64_t cap : {int64_t{-1}, int64_t{40}, int64_t{0}}) {
    MirrorInt<int32_t> row_of(b(), std::vector<int32_t>(T * K, -9)), token_of(b(), std::vector<int32_t>(T * K, -9));
    const auto cc = b().cpu.dispatch_plan(row_of.cpu(), token_of.cpu(), id.cpu(), T, K, E, cap);
    const auto cg = b().gpu->dispatch_plan(row_of.gpu(), token_of.gpu(), id.gpu(), T, K, E, cap);
    EXPECT_EQ(cg, cc) << "capacity " << cap;
    EXPECT_EQ(cc[15], 0) << "expert 15 is never chosen";
    EXPECT_EQ(row_of.gpu_values(), row_of.cpu_values()) << "capacity " << cap;
    int64_t R = 0;
    for (int64_t c : cc) R += cap >= 0 ? std::min(c, cap) : c;
    const auto tg = token_of.gpu_values(), tc = token_of.cpu_values();
    EXPECT_TRUE(std::equal(tc.begin(), tc.begin() + R, tg.begin())) << "capacity " << cap;
    Mirror x = typed(randn(T * H, 11, "x")), xp = out(std::max<int64_t>(R, 1) * H);
    b().cpu.gather_rows(xp.cpu(), x.cpu(), token_of.cpu(), R, H);
    b().gpu->gather_rows(xp.gpu(), x.gpu(), token_of.gpu(), R, H);
    if (R > 0) EXPECT_LT(mirror_err(xp), tol(act(), 0));
    Mirror w = f32(randn(T * K, 11, "w")), y = typed(randn(T * H, 11, "y0"));
    b().cpu.combine_rows(y.cpu(), 0.5f, xp.cpu(), w.cpu(), row_of.cpu(), T, K, H);
    b().gpu->combine_rows(y.gpu(), 0.5f, xp.gpu(), w.gpu_f32(), row_of.gpu(), T, K, H);
    EXPECT_LT(mirror_err(y), tol(act(), 1e-6)) << "capacity " << cap;
    Mirror dout = typed(randn(T * H, 12, "dout")), dyp = out(std::max<int64_t>(R, 1) * H), dw = out(T * K, false);
    b().cpu.combine_rows_backward(dyp.cpu(), dw.cpu(), dout.cpu(), xp.cpu(), w.cpu(), row_of.cpu(), T, K, H);
    b().gpu->combine_rows_backward(dyp.gpu(), dw.gpu_f32(), dout.gpu(), xp.gpu(), w.gpu_f32(), row_of.gpu(), T, K, H);
    if (R > 0) EXPECT_LT(mirror_err(dyp), tol(act(), 1e-6));
    EXPECT_LT(mirror_err(dw), tol(act(), 1e-5));
    Mirror dx = typed(randn(T * H, 12, "dx0"));
    b().cpu.dispatch_rows_backward(dx.cpu(), 1.f, dyp.cpu(), row_of.cpu(), T, K, H);
    b().gpu->dispatch_rows_backward(dx.gpu(), 1.f, dyp.gpu(), row_of.gpu(), T, K, H);
    EXPECT_LT(mirror_err(dx), tol(act(), 1e-6));
    // scatter is the inverse of gather over a permutation
    std::vector<int32_t> perm(R);
    std::iota(perm.begin(), perm.end(), 0);
    std::reverse(perm.begin(), perm.end());
    MirrorInt<int32_t> p(b(), perm);
    Mirror sc = out(std::max<int64_t>(R, 1) * H);
    b().cpu.scatter_rows(sc.cpu(), xp.cpu(), p.cpu(), R, H);
    b().gpu->scatter_rows(sc.gpu(), xp.gpu(), p.gpu(), R, H);
    if (R > 0) EXPECT_LT(mirror_err(sc), tol(act(), 0));
  }
}

// Grouped expert MLPs over rows grouped by expert (one expert with no rows), forward and backward.
TEST_P(BackendOp, GroupedExpertsForwardBackward) {
  const int64_t E = 5, H = 64, I = 96;
  const std::vector<int64_t> counts = {7, 0, 33, 1, 12};
  const int64_t R = 53;
  Mirror stack = typed(randn(E * 3 * I * H, 13, "stack", 0.1f)), x = typed(randn(R * H, 13, "x"));
  Mirror y = out(R * H), gu = out(R * 2 * I), a = out(R * I);
  b().cpu.experts_forward(y.cpu(), gu.cpu(), a.cpu(), x.cpu(), stack.cpu(), counts.data(), E, H, I);
  b().gpu->experts_forward(y.gpu(), gu.gpu(), a.gpu(), x.gpu(), stack.gpu(), counts.data(), E, H, I);
  EXPECT_LT(mirror_err(y), tol(act(), 1e-5));
  EXPECT_LT(mirror_err(gu), tol(act(), 1e-5));
  Mirror dy = typed(randn(R * H, 14, "dy")), dx = out(R * H), dstack = f32(std::vector<float>(E * 3 * I * H, 0.f));
  b().cpu.experts_backward(dx.cpu(), dstack.cpu(), dy.cpu(), x.cpu(), gu.cpu(), a.cpu(), stack.cpu(), counts.data(), E,
                           H, I);
  b().gpu->experts_backward(dx.gpu(), dstack.gpu_f32(), dy.gpu(), x.gpu(), gu.gpu(), a.gpu(), stack.gpu(),
                            counts.data(), E, H, I);
  EXPECT_LT(mirror_err(dx), tol(act(), 1e-4));
  EXPECT_LT(mirror_err(dstack), tol(act(), 1e-4));
}

// AdamW over several tensors (decayed and not) with the copy the model computes with: f32
// masters, moments and the rounded copy agree with the CPU's; a copy-only pass writes the copy
// from the masters; a non-finite master is counted.
TEST_P(BackendOp, AdamWUpdateAndRoundedCopy) {
  optim::OptimConfig c;
  c.lr = 1e-2;
  const int64_t n0 = 1000, n1 = 70001;
  std::vector<Mirror> p, m, v, g, w;
  for (int64_t n : {n0, n1}) {
    const std::string k = std::to_string(n);
    p.push_back(f32(randn(n, 15, "p" + k)));
    m.push_back(f32(randn(n, 15, "m" + k, 0.1f)));
    std::vector<float> vv = randn(n, 15, "v" + k, 0.1f);
    for (auto& x : vv) x = x * x;
    v.push_back(f32(vv));
    g.push_back(f32(randn(n, 15, "g" + k)));
    w.push_back(out(n));
  }
  const auto base = optim::adamw_scalars(c, c.lr, 3, false), decayed = optim::adamw_scalars(c, c.lr, 3, true);
  const bool bf16 = act() == DType::kBF16;
  for (int side = 0; side < 2; ++side) {
    std::vector<backend::AdamWTensor> ts;
    for (size_t i = 0; i < p.size(); ++i) {
      backend::AdamWTensor a;
      a.p = side ? p[i].gpu_f32() : p[i].cpu();
      a.m = side ? m[i].gpu_f32() : m[i].cpu();
      a.v = side ? v[i].gpu_f32() : v[i].cpu();
      a.g = side ? g[i].gpu_f32() : g[i].cpu();
      a.copy = bf16 ? (side ? w[i].gpu() : static_cast<void*>(w[i].cpu())) : nullptr;
      a.n = static_cast<int64_t>(p[i].size());
      a.decay = i == 1;
      ts.push_back(a);
    }
    backend::Backend& be = side ? *b().gpu : b().cpu;
    const backend::RoundCopy kind = !bf16 ? backend::RoundCopy::kNone
                                          : side ? backend::RoundCopy::kBf16 : backend::RoundCopy::kF32AsBf16;
    EXPECT_EQ(be.adamw(ts, kind, base, decayed), 0);
  }
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_LT(mirror_err(p[i]), 1e-6) << i;
    EXPECT_LT(mirror_err(m[i]), 1e-6) << i;
    EXPECT_LT(mirror_err(v[i]), 1e-6) << i;
    if (bf16) EXPECT_EQ(w[i].gpu_values(), test::rounded(p[i].gpu_values(), DType::kBF16)) << "the copy is round(p)";
  }
  // A copy-only pass (m == nullptr) after the masters changed, and the non-finite count.
  std::vector<float> pv = randn(n0, 16, "p2");
  pv[3] = std::nanf("");
  p[0].set(pv);
  backend::AdamWTensor only;
  only.p = p[0].gpu_f32();
  only.copy = bf16 ? w[0].gpu() : nullptr;
  only.n = n0;
  EXPECT_EQ(b().gpu->adamw({only}, bf16 ? backend::RoundCopy::kBf16 : backend::RoundCopy::kNone, base, decayed), 1);
  EXPECT_EQ(p[0].gpu_values()[7], pv[7]) << "a copy-only pass leaves the master alone";
  if (bf16) EXPECT_EQ(w[0].gpu_values()[7], test::rounded({pv[7]}, DType::kBF16)[0]);
}

// Stream order: an upload issued after a kernel that reads the same buffer must not overtake it,
// and a download sees every op before it (the accumulation race of issue 13).
TEST_P(BackendOp, CopiesAreOrderedWithTheOps) {
  const int64_t n = 1 << 22;
  backend::Backend& g = *b().gpu;
  const size_t es = dtype_size(act());
  auto filled = [&](float x) {
    std::vector<uint8_t> raw(n * es);
    const std::vector<float> v(n, x);
    from_f32(raw.data(), act(), v.data(), n);
    return raw;
  };
  const std::vector<uint8_t> ones = filled(1.f), twos = filled(2.f);
  backend::Buffer a(g, n * es), acc(g, n * 4);
  g.upload(a.data(), ones.data(), n * es);
  g.fill_zero(acc.data(), n * 4);
  for (int rep = 0; rep < 8; ++rep) {
    g.bias_grad(acc.as<float>(), a.data(), 1, n);  // acc += a (reads a on the stream)
    g.upload(a.data(), (rep % 2 ? ones : twos).data(), n * es);  // must land after that read
  }
  std::vector<float> h(n);
  g.download(h.data(), acc.data(), n * 4);
  // a was 1, 2, 1, 2, ... when read: 4 * 1 + 4 * 2 = 12 everywhere.
  EXPECT_EQ(*std::min_element(h.begin(), h.end()), 12.f);
  EXPECT_EQ(*std::max_element(h.begin(), h.end()), 12.f);
}

}  // namespace
}  // namespace moekit
