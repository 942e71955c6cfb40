// Training metrics: model FLOPs per token (for MFU), the machine's measured f32 GEMM rate
// (the CPU "peak" MFU is reported against), per-expert load statistics, and the JSONL log.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "config/model_config.h"

namespace moekit::train {

// Parameters and training FLOPs of one model (docs/COST.md has the formulas).
struct FlopCount {
  double params_total = 0;             // all parameters
  double params_active = 0;            // used per token (top-k experts + shared + dense)
  double params_active_non_embedding = 0;  // minus input embedding and lm_head (Qwen's convention)
  double params_embedding = 0;         // input embedding + lm_head (one matrix when tied)
  double params_expert = 0;            // routed experts of all layers: what expert parallelism splits
  // Weights of the matrix products one token goes through: the active non-embedding ones minus
  // norm scales and biases (elementwise work, < 0.01% of the FLOPs), plus the lm_head.
  double params_matmul_active = 0;
  double matmul_flops_per_token = 0;     // 6 * params_matmul_active (fwd 2 + bwd 4)
  double attention_flops_per_token = 0;  // 6 * 2 * layers * seq * q_dim (QK^T and PV, causal not halved)
  double train_flops_per_token() const { return matmul_flops_per_token + attention_flops_per_token; }
};

// Per token, for training at sequence length `seq` (PaLM appendix B convention: 6N + 12 L S d).
FlopCount count_flops(const config::ModelConfig& cfg, int64_t seq);

// Best-of-N f32 GEMM rate of this machine (FLOP/s) on an n x n x n product.
double measure_gemm_flops(int64_t n = 1024, int repeats = 3);

// Load of one MoE layer over a step: counts[e] = (token, slot) pairs routed to expert e.
struct ExpertLoad {
  int64_t layer = 0;
  std::vector<int64_t> counts;
  double max_over_mean() const;  // 1 = perfectly balanced
  int64_t dead() const;          // experts that received nothing
  std::vector<double> fractions() const;  // counts / total
};

// Append-only JSONL log (one object per line, flushed per line so a crash loses nothing).
class JsonlWriter {
 public:
  JsonlWriter(const std::string& path, bool append);
  ~JsonlWriter();
  void write(const std::string& json_line);
  // fsync: the lines written so far survive a power loss too (before a checkpoint commits).
  void sync();

 private:
  FILE* f_ = nullptr;
  std::string path_;
};

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

}  // namespace moekit::train
