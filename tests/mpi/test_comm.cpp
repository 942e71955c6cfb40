// The MPI Communicator against hand-computed results: every collective with rank-dependent
// integer-valued inputs (exact in f32), groups from the topology, byte counters.
#include <numeric>
#include <vector>

#include "mpi_gtest.h"
#include "parallel/communicator.h"

namespace moekit {
namespace {

using parallel::Communicator;
using parallel::DataType;
using parallel::ReduceOp;

Communicator& world() { return *test::mpi_context().world; }

TEST(MpiComm, AllReduceSumAvgMax) {
  Communicator& c = world();
  const int W = c.size(), r = c.rank();
  const int n = 37;
  std::vector<float> f(n);
  std::vector<double> d(n);
  std::vector<int64_t> i64(n);
  for (int i = 0; i < n; ++i) f[i] = d[i] = i64[i] = r * 10 + i;
  std::vector<float> favg = f, fmax = f;
  c.all_reduce(f.data(), n, ReduceOp::kSum);
  c.all_reduce(d.data(), n, ReduceOp::kSum);
  c.all_reduce(i64.data(), n, ReduceOp::kSum);
  c.all_reduce(favg.data(), n, ReduceOp::kAvg);
  c.all_reduce(fmax.data(), n, ReduceOp::kMax);
  for (int i = 0; i < n; ++i) {
    const double sum = 10.0 * W * (W - 1) / 2 + static_cast<double>(W) * i;  // sum_r (10 r + i)
    EXPECT_EQ(f[i], static_cast<float>(sum)) << i;
    EXPECT_EQ(d[i], sum) << i;
    EXPECT_EQ(i64[i], static_cast<int64_t>(sum)) << i;
    EXPECT_FLOAT_EQ(favg[i], static_cast<float>(sum / W)) << i;
    EXPECT_EQ(fmax[i], static_cast<float>(10 * (W - 1) + i)) << i;
  }
}

TEST(MpiComm, ReduceScatterAndAllGather) {
  Communicator& c = world();
  const int W = c.size(), r = c.rank();
  const int count = 5;
  std::vector<float> in(W * count), out(count, -1.f);
  for (int j = 0; j < W * count; ++j) in[j] = r * 100 + j;
  c.reduce_scatter(out.data(), in.data(), count, DataType::kF32, ReduceOp::kSum);
  for (int i = 0; i < count; ++i) {
    // sum over ranks q of (100 q + r*count + i)
    EXPECT_EQ(out[i], 100.f * W * (W - 1) / 2 + static_cast<float>(W) * (r * count + i)) << i;
  }
  std::vector<double> mine(count), all(W * count, -1.0);
  for (int i = 0; i < count; ++i) mine[i] = r * 7 + i;
  c.all_gather(all.data(), mine.data(), count);
  for (int q = 0; q < W; ++q)
    for (int i = 0; i < count; ++i) EXPECT_EQ(all[q * count + i], q * 7 + i) << q << "," << i;
}

// Uneven blocks (rank r owns r + 1 elements; with 4 ranks the blocks are 1, 2, 3, 4).
TEST(MpiComm, UnevenReduceScatterAndAllGather) {
  Communicator& c = world();
  const int W = c.size(), r = c.rank();
  std::vector<int64_t> counts(W);
  int64_t total = 0, mine_at = 0;
  for (int q = 0; q < W; ++q) {
    counts[q] = q + 1;
    if (q < r) mine_at += counts[q];
    total += counts[q];
  }
  std::vector<float> in(total), out(counts[r], -1.f);
  for (int64_t j = 0; j < total; ++j) in[j] = static_cast<float>(r * 100 + j);
  c.reduce_scatter_v(out.data(), in.data(), counts.data(), DataType::kF32, ReduceOp::kSum);
  for (int64_t i = 0; i < counts[r]; ++i)
    EXPECT_EQ(out[i], 100.f * W * (W - 1) / 2 + static_cast<float>(W) * (mine_at + i)) << i;
  std::vector<float> mine(counts[r]), all(total, -1.f);
  for (int64_t i = 0; i < counts[r]; ++i) mine[i] = static_cast<float>(r * 10 + i);
  c.all_gather_v(all.data(), mine.data(), counts.data(), DataType::kF32);
  int64_t at = 0;
  for (int q = 0; q < W; ++q)
    for (int64_t i = 0; i < counts[q]; ++i) EXPECT_EQ(all[at++], static_cast<float>(q * 10 + i));
}

TEST(MpiComm, AllToAll) {
  Communicator& c = world();
  const int W = c.size(), r = c.rank();
  const int count = 3;
  std::vector<int64_t> in(W * count), out(W * count, -1);
  for (int p = 0; p < W; ++p)
    for (int i = 0; i < count; ++i) in[p * count + i] = r * 1000 + p * 10 + i;  // block p goes to p
  c.all_to_all(out.data(), in.data(), count, DataType::kI64);
  for (int q = 0; q < W; ++q)
    for (int i = 0; i < count; ++i) EXPECT_EQ(out[q * count + i], q * 1000 + r * 10 + i);
}

// Uneven rows, zero-row messages, and a rank (the last) that sends nothing at all.
TEST(MpiComm, AllToAllVRowsWithEmptyMessages) {
  Communicator& c = world();
  const int W = c.size(), r = c.rank();
  const int64_t unit = 4;
  auto rows = [&](int src, int dst) -> int64_t { return src == W - 1 ? 0 : (src + 2 * dst) % 3; };
  std::vector<int64_t> sc(W), sd(W), rc(W), rd(W);
  int64_t ns = 0, nr = 0;
  for (int p = 0; p < W; ++p) {
    sc[p] = rows(r, p);
    sd[p] = ns;
    ns += sc[p];
    rc[p] = rows(p, r);
    rd[p] = nr;
    nr += rc[p];
  }
  std::vector<float> send(ns * unit), recv(nr * unit, -1.f);
  for (int p = 0; p < W; ++p)
    for (int64_t row = 0; row < sc[p]; ++row)
      for (int64_t j = 0; j < unit; ++j) send[(sd[p] + row) * unit + j] = r * 10000 + p * 100 + row * 10 + j;
  c.reset_stats();
  c.all_to_all_v(recv.data(), rc.data(), rd.data(), send.data(), sc.data(), sd.data(), unit, DataType::kF32);
  for (int q = 0; q < W; ++q)
    for (int64_t row = 0; row < rc[q]; ++row)
      for (int64_t j = 0; j < unit; ++j)
        EXPECT_EQ(recv[(rd[q] + row) * unit + j], q * 10000 + r * 100 + row * 10 + j) << "from " << q;
  int64_t remote = 0;
  for (int p = 0; p < W; ++p)
    if (p != r) remote += sc[p] * unit * 4;
  EXPECT_EQ(c.stats().all_to_all_bytes, remote);
}

TEST(MpiComm, BroadcastFromLastRank) {
  Communicator& c = world();
  const int W = c.size(), r = c.rank();
  std::vector<int32_t> v(6, r == W - 1 ? 42 : -1);
  c.broadcast(v.data(), 6, W - 1);
  for (int32_t x : v) EXPECT_EQ(x, 42);
  c.barrier();
}

// The ep and edp groups contain exactly the ranks the topology says, in that order.
TEST(MpiComm, GroupsFollowTopology) {
  auto& ctx = test::mpi_context();
  const auto ep = ctx.topo.ep_group(), edp = ctx.topo.edp_group();
  EXPECT_EQ(ctx.ep->size(), static_cast<int>(ep.size()));
  EXPECT_EQ(ctx.edp->size(), static_cast<int>(edp.size()));
  std::vector<int32_t> members(ctx.ep->size());
  const int32_t me = ctx.world->rank();
  ctx.ep->all_gather(members.data(), &me, 1);
  EXPECT_EQ(std::vector<int32_t>(ep.begin(), ep.end()), members);
  members.resize(ctx.edp->size());
  ctx.edp->all_gather(members.data(), &me, 1);
  EXPECT_EQ(std::vector<int32_t>(edp.begin(), edp.end()), members);
  // Sum of world ranks over each group, by hand.
  const int64_t ep_sum = ctx.ep->all_reduce_value<int64_t>(me);
  const int64_t edp_sum = ctx.edp->all_reduce_value<int64_t>(me);
  EXPECT_EQ(ep_sum, std::accumulate(ep.begin(), ep.end(), int64_t{0}));
  EXPECT_EQ(edp_sum, std::accumulate(edp.begin(), edp.end(), int64_t{0}));
  EXPECT_EQ(ctx.ep->world_rank(), me);
}

}  // namespace
}  // namespace moekit
