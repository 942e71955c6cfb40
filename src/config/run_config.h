// RunConfig: everything `moekit train` needs, from a YAML run file plus `--set a.b=c`
// overrides. Unknown keys are errors naming the key path and the file. The resolved config
// (every default filled in) is written to RUN_DIR/config.resolved.yaml.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.h"

namespace YAML { class Node; }

namespace moekit::config {

struct DataConfig {
  std::vector<std::string> train;  // dataset prefixes (.bin/.idx) or llm.c shards
  // When set and the first train prefix does not exist, `moekit data synth` output is
  // generated there first (so tiny configs run on a fresh machine).
  bool synth = false;
  int64_t synth_tokens = 2000000;
  int64_t synth_seed = 1;
  double valid_fraction = 0.02;
  // End-of-document token the loader appends to documents that do not already end with it.
  // YAML: `auto` (default: the model config's eos_token_id, resolved on load, e.g. Qwen's
  // <|endoftext|> 151643), `none` (documents as they are, kEosNone) or a token id.
  static constexpr int64_t kEosNone = -1;
  int64_t eos_id = kEosNone;
};

struct TrainLoopConfig {
  int64_t steps = 100;
  int64_t seq_len = 128;
  int64_t micro_batch_size = 4;
  int64_t global_batch_size = 8;
  int64_t log_every = 1;
  int64_t eval_every = 0;    // 0: only at the end
  int64_t eval_batches = 4;  // validation windows = eval_batches * micro_batch_size
  double peak_flops = 0;     // for MFU; 0: measure this machine's f32 GEMM rate at start
  std::string device = "cpu";  // cpu | cuda (backend/backend.h: one GPU per rank)
};

struct LossSection {
  std::string aux = "hf_pooled";  // none | hf_pooled | switch | global_batch
  double aux_coef = -1;           // < 0: the model config's router_aux_loss_coef
  double z_coef = 0.0;
};

// MoE routing at training time (docs/TRAINING.md).
struct MoeSection {
  // <= 0: dropless. Otherwise each expert serves at most ceil(factor * T * k / E) of a
  // micro-batch's (token, slot) pairs, in token order; the rest are dropped (moe/moe_layer.h).
  double capacity_factor = 0.0;
  // Aux-loss-free balancing (models with moe_router_enable_expert_bias): after each step every
  // expert's selection bias moves by this much towards balance (DeepSeek-V3's u).
  double router_bias_update_rate = 1e-3;
};

struct CheckpointSection {
  int64_t every = 0;  // 0: only at the end (and on SIGTERM/SIGINT)
  bool final = true;  // false: no checkpoint when the run ends (benchmarks), only every / signals
  int64_t keep = 3;
};

struct ParallelSection {
  int64_t ep = 1;      // expert-parallel ranks per group (world = ep x edp)
  bool zero1 = false;  // shard the optimizer state over the ranks replicating each parameter
  // Watchdog (parallel/watchdog.h): a collective that has not finished after
  // max(step_timeout, timeout_steps x the longest step) seconds inside a training step, or
  // max(timeout, ...) between steps, aborts the job; timeout 0 turns the watchdog off.
  double timeout = 300;
  double step_timeout = 40;
  double timeout_steps = 5;
};

struct RunConfig {
  std::string source;  // the file it came from
  std::string run_dir = "runs/default";
  uint64_t seed = 1234;
  std::string model;      // model config path or HF directory
  std::string init_from;  // HF directory to initialise from (optional)
  std::string resume = "none";  // none | auto | path
  ModelConfig model_config;     // resolved
  DataConfig data;
  TrainLoopConfig train;
  LossSection loss;
  MoeSection moe;
  CheckpointSection checkpoint;
  ParallelSection parallel;
  std::string optim_yaml = "{}";  // the optim: section, parsed by optim::OptimConfig

  // Errors name the field and the values involved (world = number of ranks; 0 = not known yet:
  // the checks that involve it use 1 for the batch and skip world % ep).
  void validate(int world = 1) const;
};

// Apply "a.b.c=value" to a YAML tree (value parsed as YAML, so numbers stay numbers).
void yaml_set_path(YAML::Node* root, const std::string& assignment);
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});
std::string run_config_to_yaml(const RunConfig& c);

}  // namespace moekit::config
