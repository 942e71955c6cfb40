// Training on an accelerator (`train.device: cuda`): what the trainer's step needs from where the
// model runs when that is not the CPU. The model (model/gpu_model.h), its gradients and the AdamW
// moments stay in device memory for the whole run; gradients are averaged over the ranks by NCCL
// on device pointers; AdamW runs on the device (optim/adamw_cuda.h) with the CPU optimizer's
// scalars. The trainer keeps its host Model and AdamW as the reference for the parameter layout,
// initialisation and the checkpoint files: from_host() after initialisation or a resume,
// to_host() before a checkpoint is written.
//
// Supported: data and expert parallelism (the same groups as on CPU ranks, mirrored by NCCL
// communicators for the device data), fp32 and bf16 precision. Not yet: ZeRO-1 and fp16 on
// GPUs; the trainer refuses them with a message naming the key.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "model/model.h"
#include "model/params.h"
#include "optim/optim.h"
#include "parallel/bootstrap.h"

namespace moekit::train {

class DeviceStep {
 public:
  virtual ~DeviceStep() = default;
  virtual std::string device_name() const = 0;

  virtual void zero_grad() = 0;
  // As model::Model::forward / backward (inputs on the host).
  virtual model::LossTerms forward(const int64_t* inputs, const int64_t* targets, int64_t batch, int64_t seq,
                                   const model::LossConfig& loss, bool train) = 0;
  virtual void backward() = 0;
  // Rows each expert received in the last forward, per layer (empty for dense layers).
  virtual const std::vector<std::vector<int64_t>>& expert_counts() const = 0;

  // Multiply the gradients by `scale`, synchronise them over the ranks as parallel/grad_sync.h
  // does, and return the global L2 norm (identical on every rank; NaN/Inf propagate).
  virtual double reduce_gradients(float scale) = 0;
  virtual void scale_gradients(float factor) = 0;
  // One AdamW update with learning rate lr (the step counter is the optimizer's own).
  virtual void optimizer_step(double lr) = 0;

  // Master weights, moments and the step count to / from the host optimizer, whose tensor i is
  // parameter i of the layout (whole tensors: no ZeRO-1 on devices).
  virtual void to_host(optim::AdamW* opt) = 0;
  virtual void from_host(optim::AdamW& opt) = 0;

  // Most device memory moekit's own buffers held at once, MiB (what `moekit cost` plans), and
  // the most the device reported in use after a forward (adds the CUDA context, cuBLAS and NCCL).
  virtual double peak_memory_mib() const = 0;
  virtual double device_used_mib() const = 0;
  // Dense peak FLOP/s of the device for the training precision (MFU's denominator when
  // train.peak_flops is 0): the vendor's bf16 tensor-core figure for H100/H200/H800 (989.4 T)
  // and A100 (312 T); 0 for devices it does not know (MFU then needs train.peak_flops).
  virtual double peak_flops() const = 0;
};

// The CUDA implementation on this rank's GPU (local rank modulo the visible devices). Throws a
// clear error in a build without CUDA or on a machine without a device.
std::unique_ptr<DeviceStep> make_cuda_step(const config::ModelConfig& cfg, const model::ParamStore& layout,
                                           const optim::OptimConfig& optim, parallel::ParallelContext& ctx);

}  // namespace moekit::train
