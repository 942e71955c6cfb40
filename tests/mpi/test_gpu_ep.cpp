// The model on the CUDA backend under expert parallelism (W ranks, ep from --ep=N, one GPU per
// rank) against the same model on the CPU backend in the same layout: each rank runs its slice of
// the global batch on its GPU (f32), with the token all-to-all over NCCL, and on the CPU (MPI);
// losses, every gradient this rank holds after the gradient sync (NCCL against MPI) and the
// global norm must agree to f32 tolerance.
// Skips in CPU builds and unless every rank has a GPU of its own (NCCL refuses two ranks per GPU).
#include "mpi_gtest.h"

#ifdef MOEKIT_WITH_CUDA
#include <cmath>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "config/model_config.h"
#include "core/device.h"
#include "core/rng.h"
#include "model/model.h"
#include "parallel/bootstrap.h"
#include "parallel/device_groups.h"
#include "parallel/grad_sync.h"
#endif

namespace moekit {
namespace {

TEST(GpuExpertParallel, MatchesCpuModelOfTheSameLayout) {
#ifndef MOEKIT_WITH_CUDA
  GTEST_SKIP() << "CPU-only build";
#else
  auto& ctx = test::mpi_context();
  if (!test::every_rank_has_a_gpu()) GTEST_SKIP() << "needs one GPU per rank";  // every rank skips together
  const parallel::LaunchInfo li = parallel::detect_launch();
  auto be = backend::make_cuda(li.local_rank % cuda_device_count(), DType::kF32);
  parallel::DeviceGroups groups(ctx, *be);

  auto cfg = config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/tiny-moe.yaml");
  cfg.num_hidden_layers = 3;
  cfg.mlp_only_layers = {1};
  const int64_t B = 2, S = 24, T = B * S;
  std::vector<int64_t> in(T), tg(T);
  CounterRng rng(3, "gpu_ep.tokens." + std::to_string(ctx.world->rank()));
  for (int64_t i = 0; i < T; ++i) {
    in[i] = static_cast<int64_t>(rng.uniform(2 * i) * cfg.vocab_size) % cfg.vocab_size;
    tg[i] = static_cast<int64_t>(rng.uniform(2 * i + 1) * cfg.vocab_size) % cfg.vocab_size;
  }
  const model::LossConfig loss{model::AuxLossForm::kHfPooled, 0.01, 0.001};

  model::Model cpu(cfg, {ctx.world.get(), ctx.ep.get()});
  model::Model gpu(cfg, {ctx.world.get(), ctx.ep.get(), &groups.ep()}, *be);
  for (model::Model* m : {&cpu, &gpu}) {
    m->params().init(9, cfg.initializer_range);
    m->params().zero_grad();
  }
  const model::LossTerms c = cpu.forward(in.data(), tg.data(), B, S, loss, true);
  cpu.backward();
  const model::LossTerms g = gpu.forward(in.data(), tg.data(), B, S, loss, true);
  gpu.backward();
  EXPECT_NEAR(g.ce, c.ce, 1e-5 * c.ce);
  EXPECT_NEAR(g.total, c.total, 1e-5 * c.total);
  // The gradient sync over NCCL against the sync over MPI.
  parallel::DeviceGroups host_groups(ctx, backend::cpu());
  auto arenas = [](model::Model& m) {
    auto& P = m.params();
    return parallel::GradArenas{P.grads(false), P.numel(false), P.grads(true), P.numel(true)};
  };
  parallel::sync_gradients(backend::cpu(), arenas(cpu), ctx, host_groups);
  parallel::sync_gradients(*be, arenas(gpu), ctx, groups);
  const double nc = parallel::global_grad_norm(backend::cpu(), arenas(cpu), ctx);
  const double ng = parallel::global_grad_norm(*be, arenas(gpu), ctx);
  EXPECT_NEAR(ng, nc, 1e-5 * nc);
  for (const auto& s : cpu.params().specs()) {
    const std::vector<float> want = backend::to_host(backend::cpu(), cpu.params().get(s.name).g, s.numel());
    const std::vector<float> have = backend::to_host(*be, gpu.params().get(s.name).g, s.numel());
    double diff = 0, mag = 1e-12;
    for (int64_t i = 0; i < s.numel(); ++i) {
      diff = std::max(diff, std::fabs(static_cast<double>(have[i]) - want[i]));
      mag = std::max(mag, std::fabs(static_cast<double>(want[i])));
      if (!std::isfinite(have[i])) diff = INFINITY;
    }
    EXPECT_LE(diff / mag, 1e-4) << s.name << " (rank " << ctx.world->rank() << ")";
  }
#endif
}

}  // namespace
}  // namespace moekit
