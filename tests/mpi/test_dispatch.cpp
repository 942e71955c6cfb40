// The all-to-all token dispatcher over the ep group of mpirun ranks, against host oracles.
// Every rank can recompute every rank's routing (it is a function of the world rank), so each
// checks exactly which rows it must receive and what it must get back. The inputs are chosen
// so that mistakes cannot cancel:
//  - tokens are tagged with (world rank, token, column): x = 1000 g + 10 t + c (DeepEP's trick);
//  - combine weights are distinct per (rank, token, slot) (NCCL-EP's trick);
//  - the last expert is never chosen (an expert that receives nothing) and the last ep rank
//    of each group has no tokens (a rank that sends nothing but still receives);
//  - "experts" are affine maps y = (e + 1) x + e / 2 that depend on the global expert id, so a
//    row delivered to the wrong expert changes the result.
#include <cmath>
#include <numeric>
#include <vector>

#include "backend/backend.h"
#include "moe/dispatch.h"
#include "moe/token_dispatcher.h"
#include "mpi_gtest.h"

namespace moekit {
namespace {

constexpr int64_t kTopk = 2, kHidden = 6;

struct RankRouting {
  int64_t tokens = 0;
  std::vector<int32_t> idx;  // (T, k)
  std::vector<float> x, w;   // (T, H), (T, k)
};

// Routing of world rank g at ep position p of a group of P, with E = 3P experts.
RankRouting routing_of(int g, int p, int P) {
  const int64_t E = 3 * P, usable = E - 1;  // expert E-1 is never chosen
  RankRouting r;
  r.tokens = p == P - 1 ? 0 : 5 + 3 * p;
  for (int64_t t = 0; t < r.tokens; ++t) {
    const int32_t a = static_cast<int32_t>((g * 7 + t * 3) % usable);
    const int64_t off = 1 + (usable > 2 ? t % (usable - 1) : 0);  // in [1, usable-1]: distinct from a
    r.idx.push_back(a);
    r.idx.push_back(static_cast<int32_t>((a + off) % usable));
    for (int64_t j = 0; j < kTopk; ++j) r.w.push_back(1.f + 0.001f * static_cast<float>(g * 64 + t * kTopk + j));
    for (int64_t c = 0; c < kHidden; ++c) r.x.push_back(static_cast<float>(1000 * g + 10 * t + c));
  }
  return r;
}

float expert_a(int64_t e) { return static_cast<float>(e + 1); }
float expert_b(int64_t e) { return 0.5f * static_cast<float>(e); }

// The MoE layer's local phase: pairs sorted by expert (dropless), rows gathered in that order.
struct LocalPlan {
  std::vector<int64_t> counts;
  std::vector<int32_t> row_of, token_of;
  std::vector<float> xp;
};
LocalPlan local_plan(const RankRouting& me, int64_t E) {
  LocalPlan lp;
  const int64_t pairs = me.tokens * kTopk;
  lp.row_of.resize(std::max<int64_t>(pairs, 1));
  lp.token_of.resize(std::max<int64_t>(pairs, 1));
  lp.counts = moe::dispatch_plan_cpu(lp.row_of.data(), lp.token_of.data(), me.idx.data(), me.tokens, kTopk, E, -1);
  lp.xp.resize(std::max<int64_t>(pairs, 1) * kHidden);
  moe::gather_rows_cpu(lp.xp.data(), me.x.data(), lp.token_of.data(), pairs, kHidden);
  return lp;
}

std::vector<int64_t> offsets_of(const int64_t* counts, int64_t n) {
  std::vector<int64_t> off(n + 1, 0);
  for (int64_t e = 0; e < n; ++e) off[e + 1] = off[e] + counts[e];
  return off;
}

TEST(TokenDispatcher, RankTaggedRoundTripForwardAndBackward) {
  auto& ctx = test::mpi_context();
  parallel::Communicator& ep = *ctx.ep;
  const int P = ep.size(), p = ep.rank(), g = ctx.world->rank();
  const int64_t E = 3 * P, El = 3, first = p * El, H = kHidden, k = kTopk;
  const RankRouting me = routing_of(g, p, P);
  const int64_t T = me.tokens;

  const LocalPlan lp = local_plan(me, E);
  moe::DispatchScratch scratch(backend::cpu());
  auto d = moe::make_all_to_all_dispatcher(backend::cpu(), E, H, ep, ep, scratch);
  EXPECT_EQ(d->local_experts(), El);
  const moe::ExpertIo io = d->dispatch(lp.xp.data(), lp.counts);
  const std::vector<int64_t> got_counts(io.counts, io.counts + El), off = offsets_of(io.counts, El);
  const float* xg = static_cast<const float*>(io.in);

  // Oracle of what reaches this rank, per local expert, in (source rank, token) order.
  std::vector<std::vector<std::vector<float>>> want(El);
  for (int q = 0; q < P; ++q) {
    const int gq = ctx.topo.rank_at(q, ctx.topo.edp_rank());
    const RankRouting src = routing_of(gq, q, P);
    for (int64_t e = 0; e < El; ++e)
      for (int64_t t = 0; t < src.tokens; ++t)
        for (int64_t j = 0; j < k; ++j)
          if (src.idx[t * k + j] == first + e)
            want[e].emplace_back(src.x.begin() + t * H, src.x.begin() + (t + 1) * H);
  }
  // No ASSERT here: an early return would leave the peers inside the next collective.
  for (int64_t e = 0; e < El; ++e) {
    EXPECT_EQ(got_counts[e], static_cast<int64_t>(want[e].size())) << "local expert " << e;
    if (first + e == E - 1) EXPECT_EQ(got_counts[e], 0) << "the unused expert received rows";
    for (size_t i = 0; i < want[e].size() && i < static_cast<size_t>(got_counts[e]); ++i)
      for (int64_t c = 0; c < H; ++c)
        EXPECT_EQ(xg[(off[e] + i) * H + c], want[e][i][c]) << "expert " << first + e << " row " << i;
  }

  // Experts: y = a_e x + b_e on the grouped rows.
  float* yg = static_cast<float*>(io.out);
  for (int64_t e = 0; e < El; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t c = 0; c < H; ++c) yg[r * H + c] = expert_a(first + e) * xg[r * H + c] + expert_b(first + e);
  const float* yp = static_cast<const float*>(d->combine());
  std::vector<float> out(std::max<int64_t>(T, 1) * H, -1.f);
  moe::combine_rows_cpu(out.data(), 0.f, yp, me.w.data(), lp.row_of.data(), T, k, H);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < H; ++c) {
      float o = 0.f;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = me.idx[t * k + j];
        o += me.w[t * k + j] * (expert_a(e) * me.x[t * H + c] + expert_b(e));
      }
      EXPECT_FLOAT_EQ(out[t * H + c], o) << "token " << t << " col " << c;
    }

  // Backward with the same handle: dweights = dout . y, dx = sum_j w a_e dout.
  std::vector<float> dout(std::max<int64_t>(T, 1) * H), dyp(std::max<int64_t>(T * k, 1) * H),
      dw(std::max<int64_t>(T * k, 1));
  for (int64_t i = 0; i < T * H; ++i) dout[i] = 0.25f * static_cast<float>(i % 7) - 0.5f + 0.01f * g;
  moe::combine_rows_backward_cpu(dyp.data(), dw.data(), dout.data(), yp, me.w.data(), lp.row_of.data(), T, k, H);
  const moe::ExpertIo bio = d->combine_backward(dyp.data());
  const float* dyg = static_cast<const float*>(bio.in);
  float* dxg = static_cast<float*>(bio.out);
  for (int64_t e = 0; e < El; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t c = 0; c < H; ++c) dxg[r * H + c] = expert_a(first + e) * dyg[r * H + c];
  const float* dxp = static_cast<const float*>(d->dispatch_backward());
  std::vector<float> dx(std::max<int64_t>(T, 1) * H, -1.f);
  moe::dispatch_rows_backward_cpu(dx.data(), 0.f, dxp, lp.row_of.data(), T, k, H);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = me.idx[t * k + j];
      double dot = 0;
      for (int64_t c = 0; c < H; ++c) dot += dout[t * H + c] * (expert_a(e) * me.x[t * H + c] + expert_b(e));
      EXPECT_NEAR(dw[t * k + j], dot, 1e-5 * std::fabs(dot) + 1e-4) << "dweight token " << t << " slot " << j;
    }
    for (int64_t c = 0; c < H; ++c) {
      float want_dx = 0.f;
      for (int64_t j = 0; j < k; ++j) want_dx += me.w[t * k + j] * expert_a(me.idx[t * k + j]) * dout[t * H + c];
      EXPECT_FLOAT_EQ(dx[t * H + c], want_dx) << "dx token " << t << " col " << c;
    }
  }
}

// Megatron's invariant: dispatch -> identity experts -> combine restores x * sum_j w_j.
TEST(TokenDispatcher, IdentityExpertsRestoreWeightedInput) {
  auto& ctx = test::mpi_context();
  parallel::Communicator& ep = *ctx.ep;
  const int P = ep.size(), p = ep.rank();
  const RankRouting me = routing_of(ctx.world->rank(), p, P);
  const int64_t T = me.tokens, H = kHidden, k = kTopk;
  const int64_t E = 3 * P;
  const LocalPlan lp = local_plan(me, E);
  moe::DispatchScratch scratch(backend::cpu());
  auto d = moe::make_all_to_all_dispatcher(backend::cpu(), E, H, ep, ep, scratch);
  const moe::ExpertIo io = d->dispatch(lp.xp.data(), lp.counts);
  std::copy(static_cast<const float*>(io.in), static_cast<const float*>(io.in) + io.rows * H,
            static_cast<float*>(io.out));
  const float* yp = static_cast<const float*>(d->combine());
  std::vector<float> out(std::max<int64_t>(T, 1) * H);
  moe::combine_rows_cpu(out.data(), 0.f, yp, me.w.data(), lp.row_of.data(), T, k, H);
  EXPECT_EQ(std::vector<float>(yp, yp + T * k * H), std::vector<float>(lp.xp.begin(), lp.xp.begin() + T * k * H))
      << "the round trip returns every row to its place, bit for bit";
  for (int64_t t = 0; t < T; ++t) {
    const float s = me.w[t * k] + me.w[t * k + 1];
    for (int64_t c = 0; c < H; ++c) EXPECT_NEAR(out[t * H + c], s * me.x[t * H + c], 1e-6f * std::fabs(s * me.x[t * H + c]));
  }
}

}  // namespace
}  // namespace moekit
