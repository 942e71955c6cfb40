// The Qwen2 / Qwen2-MoE causal LM on one GPU: the same function as model::Model (model.h), with
// the same parameters under the same HF names in the same two-arena layout (ParamStore offsets),
// so initialisation, checkpoints, export and the optimizer address both alike.
//
// Precision (DESIGN.md section 5):
//   kF32   activations and GEMMs in IEEE f32 (the GPU-vs-CPU parity tests run this way);
//   kBf16  activations in bf16, GEMMs on bf16 copies of the weights with f32 accumulation,
//          RMSNorm statistics, router softmax, aux losses and the cross-entropy in f32.
// Either way the master weights and their gradients are f32 device arenas.
//
// One forward keeps every activation its backward needs (no recomputation yet). The router's
// per-expert row counts come to the host once per MoE layer (the grouped expert GEMM needs them
// there); the aux-loss statistics come once per forward.
//
// Expert parallelism (GpuParallel with a group of P > 1 ranks): the model holds experts
// [rank * E/P, (rank + 1) * E/P) of every MoE layer (the layout must be declared that way) and
// runs the dispatcher of moe/token_dispatcher.h: the per-expert counts travel over a host
// communicator, the rows over a device one (NCCL all-to-all-v), both ways in the forward and
// again in the backward with the same handle. Every rank of the group runs forward and backward
// of the same layers together.
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include <cstdint>
#include <memory>
#include <vector>

#include "config/model_config.h"
#include "core/cuda_util.h"
#include "model/model.h"
#include "model/params.h"
#include "parallel/communicator.h"

namespace moekit::model {

enum class GpuPrecision { kF32, kBf16 };

// The process groups a GPU model runs over (none owned; all optional). The expert-parallel group
// comes twice: `counts` on the host (e.g. the MPI ep group: the small count exchange), `rows` on
// device pointers (the NCCL ep group: the token all-to-all); expert parallelism is off when
// counts is null or has one rank. `dp` (host, every data-parallel rank) serves only the
// global-batch aux loss, as model::ModelParallel::dp does for the CPU model.
struct GpuParallel {
  parallel::Communicator* counts = nullptr;
  parallel::Communicator* rows = nullptr;
  parallel::Communicator* dp = nullptr;
  bool active() const { return counts && counts->size() > 1; }
};

class GpuModel {
 public:
  // `layout`: a finalized ParamStore of this config (every expert, or with expert parallelism
  // this rank's), e.g. a CPU Model's params(); only its specs are used.
  GpuModel(const config::ModelConfig& cfg, const ParamStore& layout, cuda::Context& ctx, GpuPrecision precision,
           GpuParallel ep = {});
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const config::ModelConfig& config() const;
  GpuPrecision precision() const;

  // Weights from host arenas of the same layout (and the bf16 copies from them).
  void upload_weights(const ParamStore& host);
  void download_weights(ParamStore* host) const;
  void download_grads(ParamStore* host) const;
  // Device arenas (f32): master weights and gradients, dense (false) or expert (true).
  float* weights(bool expert);
  float* grads(bool expert);
  int64_t numel(bool expert) const;
  // The bf16 copy the GEMMs read (nullptr in kF32); refresh it after changing the masters.
  cuda::bf16* compute_weights(bool expert);
  void refresh_compute_weights();
  void zero_grad();

  // As Model::forward; inputs and targets are host arrays (B*S), checked against the vocab.
  LossTerms forward(const int64_t* inputs, const int64_t* targets, int64_t batch, int64_t seq, const LossConfig& loss,
                    bool train = true);
  void backward();
  // Logits (B*S, V) of the last forward, as f32 on the host (forward with train = false keeps
  // them; a training forward overwrites them with their gradient).
  std::vector<float> logits() const;
  // Rows each expert received in the last forward, per layer (empty for dense layers).
  const std::vector<std::vector<int64_t>>& expert_counts() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moekit::model
#endif
