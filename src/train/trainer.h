// The training loop of `moekit train` (DESIGN.md sections 4 and 11): data -> model -> loss ->
// backward -> clip -> AdamW -> schedule -> log -> evaluate -> checkpoint, with exact resume.
//
// Run directory layout (written by rank 0):
//   RUN_DIR/config.resolved.yaml   every key with its resolved value
//   RUN_DIR/metrics.jsonl          one JSON object per step (step, loss, aux_loss, lr, ...)
//   RUN_DIR/eval.jsonl             one JSON object per evaluation (step, loss, ppl, tokens)
//   RUN_DIR/expert_load.jsonl      per MoE layer and logged step: token fractions per expert
//   RUN_DIR/tb/events.out.tfevents.*   TensorBoard scalars
//   RUN_DIR/checkpoints/step_N/    HDF5 training checkpoints (checkpoint/train_checkpoint.h)
//   RUN_DIR/summary.json           totals at the end (tokens, FLOPs, wall time, losses)
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "config/run_config.h"
#include "parallel/bootstrap.h"

namespace moekit::train {

struct TrainSummary {
  int64_t steps = 0;            // steps completed (global)
  int64_t tokens = 0;           // training tokens consumed
  double final_loss = 0;        // CE of the last step
  double eval_loss = 0;         // last evaluation (NaN when none)
  double wall_seconds = 0;      // accumulated over resumed segments
  double train_flops = 0;       // tokens x training FLOPs per token
  int64_t skipped_steps = 0;    // non-finite steps skipped
  bool interrupted = false;     // stopped by SIGTERM/SIGINT after checkpointing
  int stop_signal = 0;          // which signal
  std::string last_checkpoint;  // directory of the last committed checkpoint
};

// Environment knobs for fault-injection tests (never set in normal runs):
//   MOEKIT_DEBUG_NAN_STEP=K   the loss of step K is replaced by NaN (exercises the NaN policy)
//   MOEKIT_DEBUG_KILL_STEP=K  the process SIGKILLs itself after step K's update (crash test)
//   MOEKIT_DEBUG_SIGNAL_STEP=K  raises SIGTERM after step K (preemption test)
//   MOEKIT_DEBUG_POISON_STEP=K  a NaN enters the optimizer state in step K's update (the state check)
//   MOEKIT_DEBUG_FAULT=point[:enospc]  a kill or a full disk inside the checkpoint commit (core/fault.h)
// Distributed runs (docs/PARALLEL.md): every rank of `ctx` calls it with the same config. Each
// rank trains on its slice of every global batch with its experts (ctx.topo); gradients are
// synchronised (dense over all ranks, experts over the edp group), rank 0 writes the logs, and
// every rank writes only what it owns into the checkpoints.
TrainSummary run_training(const config::RunConfig& cfg, parallel::ParallelContext& ctx);
// One process (a LocalCommunicator context).
TrainSummary run_training(const config::RunConfig& cfg);

}  // namespace moekit::train
