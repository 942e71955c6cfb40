// The GPU model under expert parallelism (W ranks, ep from --ep=N, one GPU per rank) against the
// CPU model of the same layout on the same ranks: each rank runs its slice of the global batch on
// its GPU (f32), with the token all-to-all over NCCL, and on its CPU model (MPI); losses and every
// gradient this rank holds must agree to f32 tolerance before and after the gradient sync.
// Skips in CPU builds and unless every rank has a GPU of its own (NCCL refuses two ranks per GPU).
#include "mpi_gtest.h"

#ifdef MOEKIT_WITH_CUDA
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "core/cuda_util.h"
#include "core/rng.h"
#include "model/gpu_model.h"
#include "model/model.h"
#include "parallel/bootstrap.h"
#include "parallel/nccl_communicator.h"
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
  cuda::Context cctx(li.local_rank);
  auto nccl_ep = ctx.ep->size() > 1 ? parallel::make_nccl_communicator(*ctx.ep, "ep (NCCL)") : nullptr;

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
  cpu.params().init(9, cfg.initializer_range);
  model::GpuModel gpu(cfg, cpu.params(), cctx, model::GpuPrecision::kF32,
                      {ctx.ep.get(), nccl_ep.get(), ctx.world.get()});
  gpu.upload_weights(cpu.params());
  const model::LossTerms c = cpu.forward(in.data(), tg.data(), B, S, loss, true);
  cpu.backward();
  gpu.zero_grad();
  const model::LossTerms g = gpu.forward(in.data(), tg.data(), B, S, loss, true);
  gpu.backward();
  EXPECT_NEAR(g.ce, c.ce, 1e-5 * c.ce);
  EXPECT_NEAR(g.total, c.total, 1e-5 * c.total);

  model::ParamStore got;
  model::declare_model_params(cfg, &got, cpu.experts_held());
  got.finalize();
  gpu.download_grads(&got);
  for (const auto& s : cpu.params().specs()) {
    model::Param want = cpu.params().get(s.name), have = got.get(s.name);
    double diff = 0, mag = 1e-12;
    for (int64_t i = 0; i < s.numel(); ++i) {
      diff = std::max(diff, std::fabs(static_cast<double>(have.g[i]) - want.g[i]));
      mag = std::max(mag, std::fabs(static_cast<double>(want.g[i])));
      if (!std::isfinite(have.g[i])) diff = INFINITY;
    }
    EXPECT_LE(diff / mag, 1e-4) << s.name << " (rank " << ctx.world->rank() << ")";
  }
#endif
}

}  // namespace
}  // namespace moekit
