// Parallel pieces that need no MPI: the topology grid and its validation messages, the
// single-process communicator, the global-batch aux loss, and the six-phase dispatcher on a
// group of one (which must reproduce the local dispatch bit for bit).
#include <gtest/gtest.h>

#include "core/check.h"
#include "model/model.h"
#include "moe/aux_loss.h"
#include "moe/token_dispatcher.h"
#include "parallel/bootstrap.h"
#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/topology.h"
#include "parallel/zero1.h"
#include "test_util.h"

namespace moekit {
namespace {

using parallel::Topology;

TEST(Topology, RankGridGroupsAndExperts) {
  // W = 8 = ep 4 x edp 2: ep groups are consecutive ranks, edp groups every 4th rank.
  Topology t(8, 5, 4);
  EXPECT_EQ(t.ep_rank(), 1);
  EXPECT_EQ(t.edp_rank(), 1);
  EXPECT_EQ(t.edp(), 2);
  EXPECT_EQ(t.ep_group(), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(t.edp_group(), (std::vector<int>{1, 5}));
  EXPECT_EQ(t.rank_at(3, 0), 3);
  // 60 experts over 4 ep ranks: 15 each, ep_rank 1 holds [15, 30).
  EXPECT_EQ(t.local_experts(60), 15);
  EXPECT_EQ(t.first_expert(60), 15);
  EXPECT_TRUE(t.owns_expert(29, 60));
  EXPECT_FALSE(t.owns_expert(30, 60));
  EXPECT_EQ(t.expert_owner_ep_rank(59, 60), 3);
  EXPECT_NE(t.describe().find("ep_rank 1 of 4"), std::string::npos);
  // Every rank appears in exactly one ep group and one edp group.
  std::vector<int> seen(8, 0);
  for (int r = 0; r < 8; ++r)
    for (int m : Topology(8, r, 4).ep_group()) seen[m] += (m == r);
  for (int c : seen) EXPECT_EQ(c, 1);
}

TEST(Topology, ValidationNamesEveryFactor) {
  parallel::LayoutRequest r;
  r.world = 6;
  r.ep = 4;
  r.num_experts = 60;
  r.global_batch = 10;
  r.micro_batch = 4;
  try {
    parallel::validate_layout(r);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    // All three violations at once, each with its numbers.
    EXPECT_NE(m.find("world size 6 is not divisible by ep 4 (6 % 4 = 2"), std::string::npos) << m;
    EXPECT_NE(m.find("global batch 10 is not divisible by micro batch 4 x data-parallel ranks 6 = 24"),
              std::string::npos) << m;
    r.world = 4;
    r.num_experts = 6;
    r.global_batch = 16;
    try {
      parallel::validate_layout(r);
      FAIL() << "expected an error";
    } catch (const Error& e2) {
      EXPECT_NE(std::string(e2.what()).find("num_experts 6 is not divisible by ep 4 (6 % 4 = 2)"), std::string::npos)
          << e2.what();
    }
  }
  r = {};
  r.world = 8;
  r.ep = 4;
  r.num_experts = 60;
  r.global_batch = 32;
  r.micro_batch = 2;
  EXPECT_NO_THROW(parallel::validate_layout(r));
  r.num_experts = 0;  // dense model with ep > 1
  EXPECT_THROW(parallel::validate_layout(r), Error);
  EXPECT_THROW(Topology(6, 0, 4), Error);
  EXPECT_THROW(Topology(4, 4, 2), Error);
}

TEST(LocalCommunicator, CollectivesOfOneAreCopies) {
  auto ctx = parallel::make_parallel_context(std::make_unique<parallel::LocalCommunicator>("world"), 1);
  auto& c = *ctx->world;
  EXPECT_EQ(c.size(), 1);
  std::vector<float> v = {1.5f, -2.f};
  c.all_reduce(v.data(), 2, parallel::ReduceOp::kAvg);
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.f}));
  std::vector<float> out(2);
  c.reduce_scatter(out.data(), v.data(), 2, parallel::DataType::kF32, parallel::ReduceOp::kSum);
  EXPECT_EQ(out, v);
  std::vector<double> g(3), in = {1, 2, 3};
  c.all_gather(g.data(), in.data(), 3);
  EXPECT_EQ(g, in);
  int64_t sc = 2, sd = 1, rc = 2, rd = 0;
  std::vector<float> send = {9, 9, 1, 2, 3, 4}, recv(4);
  c.all_to_all_v(recv.data(), &rc, &rd, send.data(), &sc, &sd, 2, parallel::DataType::kF32);
  EXPECT_EQ(recv, (std::vector<float>{1, 2, 3, 4}));
  rc = 1;  // a group of one must receive what it sends
  EXPECT_THROW(c.all_to_all_v(recv.data(), &rc, &rd, send.data(), &sc, &sd, 2, parallel::DataType::kF32), Error);
  EXPECT_THROW(c.broadcast(v.data(), 2, 1), Error);
  EXPECT_EQ(ctx->ep->size(), 1);
  EXPECT_EQ(ctx->edp->size(), 1);
  // Grad sync on one rank is the identity; the norm is the plain L2 norm.
  std::vector<float> d = {3.f}, e = {4.f};
  parallel::GradArenas a{d.data(), 1, e.data(), 1};
  parallel::DeviceGroups groups(*ctx, backend::cpu());
  EXPECT_EQ(&groups.world(), ctx->world.get()) << "on the CPU the device groups are the context's";
  parallel::sync_gradients(backend::cpu(), a, *ctx, groups);
  EXPECT_EQ(d[0], 3.f);
  EXPECT_EQ(e[0], 4.f);
  EXPECT_DOUBLE_EQ(parallel::global_grad_norm(backend::cpu(), a, *ctx), 5.0);
}

// A group of one with its own copy (a device backend's, parallel/device_groups.cpp): every
// exchange goes through it with the right bytes, and a split keeps it and the world rank.
TEST(LocalCommunicator, ExchangesGoThroughTheGivenCopy) {
  int64_t copies = 0, bytes = 0;
  auto counting = [&](void* dst, const void* src, size_t n) {
    ++copies;
    bytes += static_cast<int64_t>(n);
    std::memmove(dst, src, n);
  };
  parallel::LocalCommunicator c("ep (device)", counting, 5);
  EXPECT_EQ(c.world_rank(), 5);
  EXPECT_EQ(c.members(), std::vector<int>{5});
  std::vector<float> in = {1, 2, 3}, out(3);
  c.all_gather(out.data(), in.data(), 3);
  c.reduce_scatter(out.data(), in.data(), 3, parallel::DataType::kF32, parallel::ReduceOp::kSum);
  c.all_to_all(out.data(), in.data(), 3, parallel::DataType::kF32);
  int64_t sc = 2, sd = 1, rc = 2, rd = 0;
  c.all_to_all_v(out.data(), &rc, &rd, in.data(), &sc, &sd, 1, parallel::DataType::kF32);
  EXPECT_EQ(out, (std::vector<float>{2, 3, 3}));
  c.all_reduce(in.data(), 3, parallel::ReduceOp::kSum);  // the identity: no copy
  EXPECT_EQ(copies, 4);
  EXPECT_EQ(bytes, 3 * 12 + 8);
  auto sub = c.split(0, 0, "sub");
  sub->all_gather(out.data(), in.data(), 1);
  EXPECT_EQ(copies, 5);
  EXPECT_EQ(sub->world_rank(), 5);
  std::vector<int64_t> ints = {1, 2};  // the checks of the host group hold here too
  EXPECT_THROW(c.all_reduce(ints.data(), 2, parallel::DataType::kI64, parallel::ReduceOp::kAvg), Error);
}

// ZeRO-1 shards: equal splits moved to row starts, covering the arena once, slices whole rows.
TEST(Zero1Shards, RowAlignedBoundsPartitionTheArena) {
  // a (3 rows of 4) | b (10, 1-D) | c (2 rows of 5): 32 elements.
  std::vector<parallel::ArenaTensor> t = {{"a", 0, 12, 3}, {"b", 12, 10, 10}, {"c", 22, 10, 2}};
  auto b = parallel::row_aligned_bounds(t, 32, 3);
  // Targets 10 and 21: 10 is inside a's last row (starts at 8) -> 12; 21 is an element of b.
  EXPECT_EQ(b, (std::vector<int64_t>{0, 12, 21, 32}));
  auto s1 = parallel::shard_slices(t, b[1], b[2]);
  ASSERT_EQ(s1.size(), 1u);
  EXPECT_EQ(s1[0].tensor, 1u);
  EXPECT_EQ(s1[0].row_begin, 0);
  EXPECT_EQ(s1[0].rows, 9);
  auto s2 = parallel::shard_slices(t, b[2], b[3]);
  ASSERT_EQ(s2.size(), 2u);
  EXPECT_EQ(s2[0].row_begin, 9);  // b's last element
  EXPECT_EQ(s2[1].tensor, 2u);
  EXPECT_EQ(s2[1].rows, 2);
  // More parts than rows: trailing shards are empty, never overlapping.
  b = parallel::row_aligned_bounds({{"big", 0, 100, 2}}, 100, 4);
  EXPECT_EQ(b, (std::vector<int64_t>{0, 50, 50, 100, 100}));
  EXPECT_THROW(parallel::shard_slices({{"big", 0, 100, 2}}, 10, 100), Error);  // cuts a row
  b = parallel::row_aligned_bounds({}, 0, 2);  // a dense model's empty expert arena
  EXPECT_EQ(b, (std::vector<int64_t>{0, 0, 0}));
}

moe::RouterStats stats_of(int64_t tokens, std::vector<double> counts, std::vector<double> probs) {
  moe::RouterStats s;
  s.tokens = tokens;
  s.counts = std::move(counts);
  s.prob_sum = std::move(probs);
  return s;
}

moe::RouterStats sum_stats(const moe::RouterStats& a, const moe::RouterStats& b) {
  moe::RouterStats s = a;
  s.tokens += b.tokens;
  for (size_t e = 0; e < s.counts.size(); ++e) {
    s.counts[e] += b.counts[e];
    s.prob_sum[e] += b.prob_sum[e];
  }
  return s;
}

TEST(GlobalBatchAux, OneRankIsTheSwitchForm) {
  std::vector<moe::RouterStats> l = {stats_of(10, {10, 6, 4, 0}, {4, 3, 2, 1}),
                                     stats_of(10, {5, 5, 5, 5}, {2.5, 2.5, 2.5, 2.5})};
  std::vector<std::vector<float>> g1, g2;
  EXPECT_DOUBLE_EQ(moe::global_batch_aux_loss(l, 2, 1, &g1), moe::switch_aux_loss(l, 2, &g2));
  EXPECT_EQ(g1, g2);
}

// Two ranks with different local batches (rank 1 collapsed onto expert 0). The value is the
// switch form of the summed statistics; the per-rank gradient, averaged over ranks as the
// gradient sync does, is the derivative of that value (checked by perturbing one rank's
// probability sums: the loss is linear in them).
TEST(GlobalBatchAux, AveragedRankGradientsDifferentiateTheGlobalValue) {
  const auto r0 = stats_of(12, {8, 8, 4, 4}, {4, 4, 2, 2});
  const auto r1 = stats_of(8, {8, 4, 4, 0}, {5, 1.5, 1, 0.5});
  std::vector<moe::RouterStats> global = {sum_stats(r0, r1)};
  std::vector<std::vector<float>> g;
  const double v = moe::global_batch_aux_loss(global, 2, 2, &g);
  EXPECT_DOUBLE_EQ(v, moe::switch_aux_loss(global, 2, nullptr));
  // Balanced counts over the global batch even though rank 1 alone is not: f = (16,12,8,4)/40.
  for (size_t e = 0; e < 4; ++e) {
    auto bumped = r0;
    bumped.prob_sum[e] += 0.5;
    const double dv = moe::global_batch_aux_loss({sum_stats(bumped, r1)}, 2, 2, nullptr) - v;
    EXPECT_NEAR(dv / 0.5, g[0][e] / 2.0, 1e-6) << "expert " << e;
  }
}

// The all-to-all dispatcher on a group of one hands the experts exactly what the local one does,
// and both give back what the experts wrote, forward and backward.
TEST(TokenDispatcherLocal, AllToAllOnOneRankEqualsLocalDispatch) {
  const int64_t H = 5, E = 4;
  const std::vector<int64_t> counts = {3, 0, 4, 2};
  const int64_t R = 9;
  auto xp = test::randn(R * H, 3, "xp"), dyp = test::randn(R * H, 3, "dyp");
  parallel::LocalCommunicator one("ep");
  backend::Backend& be = backend::cpu();
  moe::DispatchScratch scratch(be);
  auto local = moe::make_local_dispatcher(be, E, H, scratch);
  auto a2a = moe::make_all_to_all_dispatcher(be, E, H, one, one, scratch);
  // The local dispatcher hands the experts the caller's rows (no copy); the all-to-all one on a
  // single rank moves them through its exchange and must give the same rows and counts.
  {
    const moe::ExpertIo io = local->dispatch(xp.data(), counts);
    EXPECT_EQ(io.in, static_cast<const void*>(xp.data()));
    EXPECT_EQ(io.rows, R);
    EXPECT_EQ(std::vector<int64_t>(io.counts, io.counts + E), counts);
    EXPECT_EQ(local->combine(), io.out);
    const moe::ExpertIo bio = local->combine_backward(dyp.data());
    EXPECT_EQ(bio.in, static_cast<const void*>(dyp.data()));
    EXPECT_EQ(local->dispatch_backward(), bio.out);
  }
  {
    moe::TokenDispatcher* d = a2a.get();
    const moe::ExpertIo io = d->dispatch(xp.data(), counts);
    ASSERT_EQ(io.rows, R);
    EXPECT_EQ(std::vector<int64_t>(io.counts, io.counts + E), counts);
    EXPECT_EQ(std::vector<float>(static_cast<const float*>(io.in), static_cast<const float*>(io.in) + R * H), xp);
    float* y = static_cast<float*>(io.out);
    for (int64_t i = 0; i < R * H; ++i) y[i] = 2.f * xp[i];
    const float* back = static_cast<const float*>(d->combine());
    for (int64_t i = 0; i < R * H; ++i) ASSERT_EQ(back[i], 2.f * xp[i]);
    const moe::ExpertIo bio = d->combine_backward(dyp.data());
    EXPECT_EQ(std::vector<float>(static_cast<const float*>(bio.in), static_cast<const float*>(bio.in) + R * H), dyp);
    float* dx = static_cast<float*>(bio.out);
    for (int64_t i = 0; i < R * H; ++i) dx[i] = -dyp[i];
    const float* dxp = static_cast<const float*>(d->dispatch_backward());
    for (int64_t i = 0; i < R * H; ++i) ASSERT_EQ(dxp[i], -dyp[i]);
  }
  EXPECT_EQ(local->local_experts(), E);
  EXPECT_EQ(a2a->local_experts(), E);
}

// In one process, loss.aux = global_batch is the switch form (value and gradients).
TEST(GlobalBatchAux, SingleProcessModelMatchesSwitch) {
  auto cfg = config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/tiny-moe.yaml");
  cfg.num_hidden_layers = 2;
  const int64_t B = 2, S = 8;
  std::vector<int64_t> in(B * S), tg(B * S);
  for (int64_t i = 0; i < B * S; ++i) in[i] = (i * 37) % cfg.vocab_size, tg[i] = (i * 11 + 3) % cfg.vocab_size;
  auto run = [&](model::AuxLossForm f, std::vector<float>* grads) {
    model::Model m(cfg);
    m.params().init(5, cfg.initializer_range);
    auto l = m.forward(in.data(), tg.data(), B, S, {f, 0.1, 0.0});
    m.backward();
    grads->assign(m.params().grads(false), m.params().grads(false) + m.params().numel(false));
    return l;
  };
  std::vector<float> gg, gs;
  auto lg = run(model::AuxLossForm::kGlobalBatch, &gg);
  auto ls = run(model::AuxLossForm::kSwitch, &gs);
  EXPECT_DOUBLE_EQ(lg.aux_global, ls.aux_switch);
  EXPECT_DOUBLE_EQ(lg.total, ls.total);
  EXPECT_EQ(gg, gs);
}

}  // namespace
}  // namespace moekit
