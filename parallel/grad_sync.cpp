#include "parallel/grad_sync.h"

#include <cmath>

namespace moekit::parallel {

void sync_gradients(backend::Backend& be, const GradArenas& g, const ParallelContext& ctx, const DeviceGroups& d) {
  const int W = ctx.topo.world();
  if (W == 1) return;
  if (g.dense_n > 0) d.world().all_reduce(g.dense, g.dense_n, ReduceOp::kAvg);
  if (g.expert_n > 0) {
    if (d.edp().size() > 1) d.edp().all_reduce(g.expert, g.expert_n, ReduceOp::kSum);
    be.scale(g.expert, 1.f / static_cast<float>(W), g.expert_n);
  }
}

double global_grad_norm(backend::Backend& be, const GradArenas& g, const ParallelContext& ctx) {
  // Fixed-order sums (backend.h): every replica computes the same norm and clips the same way
  // (replicas that clipped differently would drift apart).
  double expert = be.sum_squares(g.expert, g.expert_n);
  if (ctx.ep->size() > 1) ctx.ep->all_reduce(&expert, 1, ReduceOp::kSum);
  return std::sqrt(be.sum_squares(g.dense, g.dense_n) + expert);
}

}  // namespace moekit::parallel
