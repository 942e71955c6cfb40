// moekit train: one training run from a run config (DESIGN.md section 11). The last stdout line
// is the run summary as JSON. Stopped by SIGTERM/SIGINT it checkpoints, then exits with
// 128 + signal (the shell's convention for "terminated"), so `train && export` does not go on.
// SIGUSR2 counts as SIGTERM (launch/mpirun forwards preemption as SIGUSR2: Open MPI's mpirun
// kills ranks on SIGTERM). A collective that does not finish in time aborts the job with exit
// code 75 (parallel/watchdog.h).
// Under mpirun or srun every rank runs this command: MPI starts when a launcher is detected
// (parallel/bootstrap.h), rank 0 prints the summary, and an error on any rank is printed with
// the rank and aborts the whole job (MPI_Abort) instead of leaving the others in a collective.
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "config/run_config.h"
#include "core/log.h"
#include "parallel/bootstrap.h"
#include "parallel/watchdog.h"
#include "train/trainer.h"

namespace moekit::cli {

namespace {

struct TrainOpts {
  std::string config;
  std::vector<std::string> sets;
};

// Open MPI's mpirun turns a SIGTERM into a kill of the ranks (SIGTERM, SIGKILL a second later),
// but forwards SIGUSR2 to every rank: launch/mpirun sends SIGUSR2 on preemption, and this turns
// it into the SIGTERM the trainer checkpoints on (exit 143).
extern "C" void usr2_to_term(int) { std::raise(SIGTERM); }

// The watchdog runs for the lifetime of the training only (its thread is gone before
// MPI_Finalize).
struct WatchdogSession {
  explicit WatchdogSession(const config::RunConfig& cfg) {
    parallel::watchdog().configure({cfg.parallel.timeout, cfg.parallel.step_timeout, cfg.parallel.timeout_steps});
  }
  ~WatchdogSession() { parallel::watchdog().stop(); }
};

int run(const TrainOpts& o) {
  const config::RunConfig cfg = config::load_run_config(o.config, o.sets);
  auto ctx = parallel::make_parallel_context(static_cast<int>(cfg.parallel.ep));
  std::signal(SIGUSR2, usr2_to_term);
  const WatchdogSession watch(cfg);
  const train::TrainSummary s = train::run_training(cfg, *ctx);
  // Rank 0 commits the last checkpoint after the others wrote theirs: no rank may exit (with
  // 143 after a stop, which makes mpirun and srun --kill-on-bad-exit kill the rest) before it
  // is committed.
  ctx->world->barrier();
  if (ctx->topo.rank() != 0) return s.interrupted ? 128 + s.stop_signal : 0;
  nlohmann::json j{{"steps", s.steps},
                   {"tokens", s.tokens},
                   {"final_loss", s.final_loss},
                   {"eval_loss", s.eval_loss == s.eval_loss ? nlohmann::json(s.eval_loss)
                                                              : nlohmann::json(nullptr)},
                   {"wall_seconds", s.wall_seconds},
                   {"train_flops", s.train_flops},
                   {"skipped_steps", s.skipped_steps},
                   {"interrupted", s.interrupted},
                   {"checkpoint", s.last_checkpoint}};
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  if (s.interrupted) {
    log_warn("train: stopped by signal ", s.stop_signal, " at step ", s.steps,
             "; resume with --set resume=auto");
    return 128 + s.stop_signal;
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& root, std::vector<Command>* out) {
  auto o = std::make_shared<TrainOpts>();
  CLI::App* app = root.add_subcommand(
      "train",
      "Train a model from a run config: writes RUN_DIR/config.resolved.yaml, metrics.jsonl, eval.jsonl,\n"
      "expert_load.jsonl, tb/ (TensorBoard), checkpoints/step_N/ (HDF5) and summary.json.\n"
      "Resume a stopped run with --set resume=auto. Keys: docs/TRAINING.md.");
  app->add_option("--config", o->config, "Run config YAML (e.g. configs/train/tiny-moe.yaml)")->required();
  app->add_option("--set", o->sets, "Override a key: --set train.steps=10 --set optim.lr=1e-3 (repeatable)");
  out->push_back({app, [o]() {
                    parallel::MpiSession mpi(nullptr, nullptr);
                    return parallel::run_or_abort([&] { return run(*o); });
                  }});
}

}  // namespace moekit::cli

