// Distributed training-step benchmark (run under mpirun, or alone for W = 1): each rank runs
// forward + backward of its micro-batch, the gradient sync and the global grad norm, exactly as
// the trainer's step does before AdamW (which is local and the same on every layout), and
// reports
//   - tokens/s over the whole world (median step),
//   - the bytes this rank handed to each collective per step (Communicator::stats()), beside
//     the analytic count of what a step must move:
//       world all-reduce   dense gradients: N_dense * 4 bytes (W > 1)
//       edp all-reduce     expert gradients of this rank: N_expert * 4 bytes (edp > 1)
//       ep all-reduce      the expert part of the squared grad norm: 8 bytes (ep > 1)
//       ep all-to-all      per MoE layer (ep > 1): the per-expert row counts, (ep-1) * E/ep * 8
//                          bytes, then four row exchanges of H f32 each: dispatch and the
//                          backward of combine send the rows this rank routes to other ranks'
//                          experts; combine and the backward of dispatch send back the rows
//                          other ranks routed to this rank's experts.
//     The routed row counts come from the router's choices (RouterState::idx) on every rank,
//     gathered with a raw MPI_Allgather that the Communicator counters do not see (ep > 1 only).
// With --check the program exits 1 when a measured count differs from the analytic one.
//   mpirun -np 2 build/tests/bench_parallel --ep 2 [--model configs/models/bench-moe.yaml] [--json]
// tests/bench/run_parallel_bench.sh runs W = 1 and 2 and prints the table of docs/PERF.md.
#include <CLI/CLI.hpp>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "core/rng.h"
#include "backend/backend.h"
#include "model/model.h"
#include "parallel/bootstrap.h"
#include "parallel/device_groups.h"
#include "parallel/grad_sync.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace moekit;

std::string default_model_path() {
  const std::string rel = "configs/models/bench-moe.yaml";
  if (std::filesystem::exists(rel)) return rel;
  const auto src = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / rel;
  return std::filesystem::exists(src) ? src.string() : rel;
}

struct Bytes {
  int64_t world_ar = 0, edp_ar = 0, ep_ar = 0, ep_a2a = 0;
};

Bytes measured(const parallel::ParallelContext& ctx) {
  return {ctx.world->stats().all_reduce_bytes, ctx.edp->stats().all_reduce_bytes, ctx.ep->stats().all_reduce_bytes,
          ctx.ep->stats().all_to_all_bytes};
}

// Rows this rank sends to / receives from other ep ranks in one exchange of one MoE layer,
// from the router's choices of every rank of the ep group.
void routed_remote_rows(const model::Model& m, const parallel::ParallelContext& ctx, int64_t* out_rows,
                        int64_t* in_rows) {
  const auto& cfg = m.config();
  const int ep = ctx.topo.ep(), W = ctx.topo.world(), me = ctx.topo.rank();
  const int64_t El = cfg.num_experts / ep;
  // counts[l][owner]: rows this rank routes to the experts of ep rank `owner`, per MoE layer.
  std::vector<int64_t> local;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::vector<int64_t>& counts = m.expert_counts()[l];
    if (counts.empty()) continue;
    std::vector<int64_t> per_owner(ep, 0);
    for (size_t e = 0; e < counts.size(); ++e) per_owner[e / El] += counts[e];
    local.insert(local.end(), per_owner.begin(), per_owner.end());
  }
  std::vector<int64_t> all(local.size() * W);
  MPI_Allgather(local.data(), static_cast<int>(local.size()), MPI_INT64_T, all.data(), static_cast<int>(local.size()),
                MPI_INT64_T, MPI_COMM_WORLD);
  // ep groups are consecutive world ranks (parallel/topology.h).
  const int group0 = me - ctx.topo.ep_rank(), my_ep = ctx.topo.ep_rank();
  const size_t layers = local.size() / ep;
  *out_rows = *in_rows = 0;
  for (size_t l = 0; l < layers; ++l)
    for (int p = 0; p < ep; ++p) {
      if (p == my_ep) continue;
      *out_rows += local[l * ep + p];
      *in_rows += all[static_cast<size_t>(group0 + p) * local.size() + l * ep + my_ep];
    }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  parallel::MpiSession mpi(&argc, &argv);
  CLI::App app{"moekit distributed step benchmark: tokens/s and collective bytes against the analytic count"};
  std::string model_path = default_model_path();
  int ep = 1, steps = 5, warmup = 1;
  int64_t batch = 2, seq = 256;
  bool json = false, check = false;
  app.add_option("--model", model_path, "model config (YAML or HF config.json)");
  app.add_option("--ep", ep, "expert-parallel size")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "sequences per rank per step")->check(CLI::PositiveNumber);
  app.add_option("--seq", seq, "tokens per sequence")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_flag("--json", json, "rank 0 prints one JSON line");
  app.add_flag("--check", check, "exit 1 when a measured byte count differs from the analytic one");
  CLI11_PARSE(app, argc, argv);

  return parallel::run_or_abort([&]() -> int {
    auto ctx = parallel::make_parallel_context(ep);
    const config::ModelConfig cfg = config::load_model_config(model_path);
    const int W = ctx->topo.world(), rank = ctx->topo.rank();
    model::Model m(cfg, {ctx->world.get(), ctx->ep.get()});
    auto& P = m.params();
    P.init(1, cfg.initializer_range);
    const int64_t T = batch * seq;
    std::vector<int64_t> in(T), tg(T);
    CounterRng rng(99, "bench_parallel.tokens." + std::to_string(rank));
    for (int64_t i = 0; i < T; ++i) {
      in[i] = static_cast<int64_t>(rng.uniform(2 * i) * cfg.vocab_size) % cfg.vocab_size;
      tg[i] = static_cast<int64_t>(rng.uniform(2 * i + 1) * cfg.vocab_size) % cfg.vocab_size;
    }
    const model::LossConfig loss{model::AuxLossForm::kHfPooled, 0.001, 0.0};
    parallel::GradArenas g{P.grads(false), P.numel(false), P.grads(true), P.numel(true)};
    parallel::DeviceGroups groups(*ctx, backend::cpu());

    std::vector<double> times;
    Bytes per_step{};
    int64_t out_rows = 0, in_rows = 0;
    for (int i = 0; i < warmup + steps; ++i) {
      P.zero_grad();
      ctx->world->barrier();
      const Bytes before = measured(*ctx);
      const auto t0 = Clock::now();
      m.forward(in.data(), tg.data(), batch, seq, loss);
      m.backward();
      parallel::sync_gradients(backend::cpu(), g, *ctx, groups);
      parallel::global_grad_norm(backend::cpu(), g, *ctx);
      double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      const Bytes after = measured(*ctx);
      per_step = {after.world_ar - before.world_ar, after.edp_ar - before.edp_ar, after.ep_ar - before.ep_ar,
                  after.ep_a2a - before.ep_a2a};
      ctx->world->all_reduce(&dt, 1, parallel::ReduceOp::kMax);  // the step ends when the slowest rank ends
      if (i >= warmup) times.push_back(dt);
    }
    if (ctx->topo.ep() > 1) routed_remote_rows(m, *ctx, &out_rows, &in_rows);  // the last step's routing

    const int64_t H = cfg.hidden_size, El = cfg.is_moe() ? cfg.num_experts / ctx->topo.ep() : 0;
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) moe_layers += cfg.is_sparse_layer(l);
    const int epn = ctx->topo.ep(), edp = ctx->topo.edp();
    Bytes want;
    want.world_ar = W > 1 ? P.numel(false) * 4 : 0;
    want.edp_ar = edp > 1 ? P.numel(true) * 4 : 0;
    want.ep_ar = epn > 1 ? 8 : 0;
    want.ep_a2a = epn > 1 ? moe_layers * (epn - 1) * El * 8 + 2 * (out_rows + in_rows) * H * 4 : 0;
    const bool agree = per_step.world_ar == want.world_ar && per_step.edp_ar == want.edp_ar &&
                       per_step.ep_ar == want.ep_ar && per_step.ep_a2a == want.ep_a2a;
    int32_t disagree = agree ? 0 : 1;
    ctx->world->all_reduce(&disagree, 1, parallel::DataType::kI32, parallel::ReduceOp::kMax);
    const bool all_agree = disagree == 0;
    if (!agree)
      std::fprintf(stderr,
                   "bench_parallel: rank %d: measured bytes per step differ from the analytic count: world all-reduce "
                   "%lld vs %lld, edp all-reduce %lld vs %lld, ep all-reduce %lld vs %lld, ep all-to-all %lld vs %lld\n",
                   rank, (long long)per_step.world_ar, (long long)want.world_ar, (long long)per_step.edp_ar,
                   (long long)want.edp_ar, (long long)per_step.ep_ar, (long long)want.ep_ar,
                   (long long)per_step.ep_a2a, (long long)want.ep_a2a);
    const double t_med = median(times), tok_s = static_cast<double>(W * T) / t_med;
    if (rank == 0) {
      if (json) {
        std::printf(
            "{\"world\": %d, \"ep\": %d, \"edp\": %d, \"tokens_per_step\": %lld, \"ms_per_step\": %.3f, "
            "\"tokens_per_s\": %.2f, \"dense_params\": %lld, \"expert_params_rank0\": %lld, "
            "\"bytes\": {\"world_all_reduce\": %lld, \"edp_all_reduce\": %lld, \"ep_all_reduce\": %lld, "
            "\"ep_all_to_all\": %lld}, \"analytic\": {\"world_all_reduce\": %lld, \"edp_all_reduce\": %lld, "
            "\"ep_all_reduce\": %lld, \"ep_all_to_all\": %lld}, \"remote_rows_out\": %lld, \"remote_rows_in\": %lld, "
            "\"agree\": %s}\n",
            W, epn, edp, (long long)(W * T), t_med * 1e3, tok_s, (long long)P.numel(false), (long long)P.numel(true),
            (long long)per_step.world_ar, (long long)per_step.edp_ar, (long long)per_step.ep_ar,
            (long long)per_step.ep_a2a, (long long)want.world_ar, (long long)want.edp_ar, (long long)want.ep_ar,
            (long long)want.ep_a2a, (long long)out_rows, (long long)in_rows, all_agree ? "true" : "false");
      } else {
        std::printf("W=%d ep=%d edp=%d: %.1f ms/step, %.1f tokens/s; rank 0 bytes/step measured (analytic): "
                    "world all-reduce %lld (%lld), edp all-reduce %lld (%lld), ep all-reduce %lld (%lld), "
                    "ep all-to-all %lld (%lld) -> %s\n",
                    W, epn, edp, t_med * 1e3, tok_s, (long long)per_step.world_ar, (long long)want.world_ar,
                    (long long)per_step.edp_ar, (long long)want.edp_ar, (long long)per_step.ep_ar,
                    (long long)want.ep_ar, (long long)per_step.ep_a2a, (long long)want.ep_a2a,
                    all_agree ? "agree" : "DISAGREE");
      }
    }
    return check && !all_agree ? 1 : 0;
  });
}
