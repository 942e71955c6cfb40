// Memory plan of one training rank: weights, fp32 master copy, gradients, AdamW moments (ZeRO-1
// sharded or not), the activations one micro-batch keeps for its backward, the buffers every
// layer reuses (workspace) and the expert-parallel all-to-all staging. It counts what the one
// model (model/model.h over backend/backend.h) allocates on each backend:
//   kGpu: the CUDA backend: activations in the compute dtype, a bf16 GEMM copy of the weights
//         beside the f32 ones, attention saving one log-sum-exp per row, cuBLAS' workspace;
//         compared with the device's allocations by tests/bench/run_gpu_bench.sh;
//   kCpu: the CPU backend: f32 everywhere, attention keeping its probabilities (B, heads, S, S);
//         comparable with peak RSS (tests/unit/test_cost.cpp measures it).
// The formulas, tensor by tensor, are in docs/COST.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "core/dtype.h"

namespace moekit::train {

enum class MemoryMode { kGpu, kCpu };
MemoryMode memory_mode_parse(const std::string& s);  // "gpu" | "cpu"
const char* memory_mode_name(MemoryMode m);

struct LayoutSpec {
  int64_t ep = 1;  // expert-parallel ranks (experts split evenly)
  int64_t dp = 1;  // data-parallel replicas of each expert group; world = ep * dp
  bool zero1 = false;  // shard master weights and moments over the ranks that replicate a parameter
  int64_t micro_batch = 1;
  int64_t seq_len = 2048;
  DType compute = DType::kBF16;  // weights and activations (kF32: no master copy)
  DType grads = DType::kF32;     // gradient buffer (GPU mode; the CPU model's is always f32)
  MemoryMode mode = MemoryMode::kGpu;
  int64_t cpu_threads = 1;       // kCpu: threads of the expert backward (one scratch each)
  double device_memory_bytes = 0;  // 0: not judged

  int64_t world() const { return ep * dp; }
  int64_t tokens() const { return micro_batch * seq_len; }  // per rank per micro-batch
  // Errors name the option and the values (e.g. ep not dividing num_experts).
  void validate(const config::ModelConfig& cfg) const;
};

// One saved (or transient) tensor of the plan, for the breakdown table.
struct MemoryItem {
  std::string name;   // e.g. "attention q,k,v (after RoPE)"
  int64_t count = 1;  // how many copies (layers)
  int64_t bytes = 0;  // per copy
};

struct MemoryPlan {
  // Parameters this rank holds and the shard its optimizer updates.
  int64_t params_dense = 0;         // replicated on every rank (all but the routed experts)
  int64_t params_expert_local = 0;  // this rank's routed experts
  int64_t params_on_rank = 0;
  int64_t params_optimizer_shard = 0;  // = params_on_rank without ZeRO-1
  int64_t experts_per_rank = 0;
  // Bytes on this rank.
  int64_t weights = 0, master = 0, grads = 0, moments = 0;
  int64_t activations = 0;  // kept from forward to backward for one micro-batch
  int64_t workspace = 0;    // backward transients at their peak
  int64_t comm = 0;         // all-to-all send/receive buffers (ep > 1)
  int64_t total = 0;
  double device_memory_bytes = 0;
  std::vector<MemoryItem> activation_items;  // sums to `activations`
  std::vector<MemoryItem> workspace_items;   // their maximum is `workspace`

  int64_t state() const { return weights + master + grads + moments; }
  bool judged() const { return device_memory_bytes > 0; }
  bool fits() const { return !judged() || static_cast<double>(total) <= device_memory_bytes; }
};

MemoryPlan plan_memory(const config::ModelConfig& cfg, const LayoutSpec& layout);

}  // namespace moekit::train
