#include "parallel/zero1.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"

namespace moekit::parallel {

std::vector<int64_t> row_aligned_bounds(const std::vector<ArenaTensor>& tensors, int64_t arena_numel, int parts) {
  MOEKIT_CHECK(parts >= 1, "row_aligned_bounds: parts must be >= 1, got ", parts);
  std::vector<int64_t> b(parts + 1, arena_numel);
  b[0] = 0;
  size_t t = 0;
  for (int i = 1; i < parts; ++i) {
    const int64_t target = arena_numel * i / parts;
    while (t < tensors.size() && tensors[t].offset + tensors[t].numel <= target) ++t;
    if (t == tensors.size()) break;  // b[i..] stay at the end
    const ArenaTensor& x = tensors[t];
    const int64_t row = x.numel / std::max<int64_t>(1, x.rows);
    const int64_t into = std::max<int64_t>(0, target - x.offset);
    // Round up to the next row start (a boundary inside a row moves to that row's end).
    b[i] = std::max(b[i - 1], x.offset + std::min(x.numel, (into + row - 1) / row * row));
  }
  return b;
}

std::vector<ShardSlice> shard_slices(const std::vector<ArenaTensor>& tensors, int64_t begin, int64_t end) {
  std::vector<ShardSlice> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ArenaTensor& x = tensors[i];
    const int64_t lo = std::max(begin, x.offset), hi = std::min(end, x.offset + x.numel);
    if (lo >= hi) continue;
    const int64_t row = x.numel / std::max<int64_t>(1, x.rows);
    MOEKIT_CHECK((lo - x.offset) % row == 0 && (hi - x.offset) % row == 0, "shard [", begin, ", ", end,
                 ") cuts a row of '", x.name, "'");
    out.push_back({i, (lo - x.offset) / row, (hi - lo) / row, lo, hi - lo});
  }
  return out;
}

namespace {

std::vector<int64_t> counts_of(const std::vector<int64_t>& bounds) {
  std::vector<int64_t> c(bounds.size() - 1);
  for (size_t i = 0; i + 1 < bounds.size(); ++i) c[i] = bounds[i + 1] - bounds[i];
  return c;
}

}  // namespace

Zero1::Zero1(std::vector<ArenaTensor> dense, int64_t dense_n, std::vector<ArenaTensor> expert, int64_t expert_n,
             const ParallelContext& ctx, backend::Backend& be, const DeviceGroups& groups)
    : dense_(std::move(dense)), expert_(std::move(expert)), ctx_(ctx), be_(be), groups_(groups), scratch_(be) {
  dense_bounds_ = row_aligned_bounds(dense_, dense_n, ctx_.world->size());
  expert_bounds_ = row_aligned_bounds(expert_, expert_n, ctx_.edp->size());
  dense_count_ = counts_of(dense_bounds_);
  expert_count_ = counts_of(expert_bounds_);
  const int r = ctx_.world->rank(), e = ctx_.edp->rank();
  dense_slices_ = shard_slices(dense_, dense_bounds_[r], dense_bounds_[r + 1]);
  expert_slices_ = shard_slices(expert_, expert_bounds_[e], expert_bounds_[e + 1]);
}

void Zero1::reduce_gradients(const GradArenas& g) {
  const float s = 1.f / static_cast<float>(ctx_.topo.world());
  auto reduce = [&](float* arena, const std::vector<int64_t>& bounds, const std::vector<int64_t>& counts,
                    Communicator& group) {
    const int r = group.rank();
    const size_t bytes = static_cast<size_t>(counts[r]) * sizeof(float);
    float* tmp = static_cast<float*>(scratch_.reserve(bytes));
    // MPI forbids aliasing the input: reduce into scratch, then put the shard back in place.
    group.reduce_scatter_v(tmp, arena, counts.data(), DataType::kF32, ReduceOp::kSum);
    be_.copy(arena + bounds[r], tmp, bytes);
    be_.scale(arena + bounds[r], s, counts[r]);
  };
  reduce(g.dense, dense_bounds_, dense_count_, groups_.world());
  reduce(g.expert, expert_bounds_, expert_count_, groups_.edp());
}

double Zero1::grad_norm(const GradArenas& g) const {
  // Dense shards partition the dense arena over the world; expert shards partition each ep
  // rank's experts over its edp group, and ep ranks hold different experts: summing every
  // rank's shard squares over the world counts each parameter exactly once.
  double sq = be_.sum_squares(g.dense + dense_bounds_[ctx_.world->rank()], dense_shard_numel()) +
              be_.sum_squares(g.expert + expert_bounds_[ctx_.edp->rank()], expert_shard_numel());
  ctx_.world->all_reduce(&sq, 1, ReduceOp::kSum);
  return std::sqrt(sq);
}

void Zero1::gather_weights(float* dense_w, float* expert_w) {
  auto gather = [&](float* arena, const std::vector<int64_t>& bounds, const std::vector<int64_t>& counts,
                    Communicator& group) {
    const int r = group.rank();
    const size_t bytes = static_cast<size_t>(counts[r]) * sizeof(float);
    float* tmp = static_cast<float*>(scratch_.reserve(bytes));
    be_.copy(tmp, arena + bounds[r], bytes);
    group.all_gather_v(arena, tmp, counts.data(), DataType::kF32);
  };
  gather(dense_w, dense_bounds_, dense_count_, groups_.world());
  gather(expert_w, expert_bounds_, expert_count_, groups_.edp());
}

}  // namespace moekit::parallel
