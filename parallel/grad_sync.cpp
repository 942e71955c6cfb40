#include "parallel/grad_sync.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moekit::parallel {

double sum_squares(const float* x, int64_t n) {
  // Fixed chunks summed in a fixed order: the result does not depend on the thread count, so
  // every replica computes the same norm and applies the same clip factor (replicas that
  // clipped differently would drift apart).
  constexpr int64_t kChunk = 8192;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0;
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) s += static_cast<double>(x[i]) * x[i];
    part[c] = s;
  }
  double s = 0;
  for (double p : part) s += p;
  return s;
}

void sync_gradients(const GradArenas& g, const ParallelContext& ctx) {
  const int W = ctx.topo.world();
  if (W == 1) return;
  if (g.dense_n > 0) ctx.world->all_reduce(g.dense, g.dense_n, ReduceOp::kAvg);
  if (g.expert_n > 0) {
    if (ctx.edp->size() > 1) ctx.edp->all_reduce(g.expert, g.expert_n, ReduceOp::kSum);
    const float s = 1.f / static_cast<float>(W);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < g.expert_n; ++i) g.expert[i] *= s;
  }
}

double global_grad_norm(const GradArenas& g, const ParallelContext& ctx) {
  double expert = sum_squares(g.expert, g.expert_n);
  if (ctx.ep->size() > 1) ctx.ep->all_reduce(&expert, 1, ReduceOp::kSum);
  return std::sqrt(sum_squares(g.dense, g.dense_n) + expert);
}

}  // namespace moekit::parallel
