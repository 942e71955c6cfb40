// DeviceStep on CUDA (device_step.h): GpuModel + device AdamW state + NCCL gradient averaging.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "core/cuda_util.h"
#include "core/log.h"
#include "kernels/kernels_cuda.h"
#include "model/gpu_model.h"
#include "optim/adamw_cuda.h"
#include "parallel/nccl_communicator.h"
#include "train/device_step.h"

namespace moekit::train {

namespace {

class CudaStep final : public DeviceStep {
 public:
  CudaStep(const config::ModelConfig& cfg, const model::ParamStore& layout, const optim::OptimConfig& oc,
           parallel::ParallelContext& pctx)
      : oc_(oc), pctx_(pctx), specs_(layout.specs()),
        ctx_(cuda::device_for_local_rank(parallel::detect_launch().local_rank)), nccl_(make_groups(pctx)),
        model_(cfg, layout, ctx_,
               oc.precision == optim::Precision::kBf16 ? model::GpuPrecision::kBf16 : model::GpuPrecision::kF32,
               {pctx.ep.get(), nccl_.ep.get(), pctx.world.get()}) {
    for (int e = 0; e < 2; ++e) {
      m_[e] = cuda::DeviceArray<float>(static_cast<size_t>(model_.numel(e)));
      v_[e] = cuda::DeviceArray<float>(static_cast<size_t>(model_.numel(e)));
    }
    for (const auto& s : specs_) decay_.push_back(optim::applies_weight_decay(oc_, s.name));
    cudaDeviceProp prop;
    MOEKIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx_.device()));
    name_ = std::string(prop.name) + " (device " + std::to_string(ctx_.device()) + ")";
    note_device_used();
  }

  std::string device_name() const override { return name_; }
  void zero_grad() override { model_.zero_grad(); }

  model::LossTerms forward(const int64_t* in, const int64_t* tg, int64_t B, int64_t S, const model::LossConfig& loss,
                           bool train) override {
    model::LossTerms t = model_.forward(in, tg, B, S, loss, train);
    note_device_used();  // every activation of the step is alive now: the device's own view of it
    return t;
  }
  void backward() override { model_.backward(); }
  const std::vector<std::vector<int64_t>>& expert_counts() const override { return model_.expert_counts(); }

  // parallel/grad_sync.h on device arenas: dense gradients averaged over the world, expert
  // gradients summed over the edp group and scaled by 1/W; the norm counts each parameter once
  // (the expert part summed over the ep group).
  double reduce_gradients(float scale) override {
    const int W = pctx_.topo.world();
    const float expert_scale = scale / static_cast<float>(W);
    if (model_.numel(false) > 0) {
      if (scale != 1.f) kernels::scale_cuda(ctx_, model_.grads(false), scale, model_.numel(false));
      if (nccl_.world) {
        ctx_.synchronize();  // the NCCL communicators work on their own streams: hand them finished data
        nccl_.world->all_reduce(model_.grads(false), model_.numel(false), parallel::ReduceOp::kAvg);
      }
    }
    if (model_.numel(true) > 0) {
      if (nccl_.edp) {
        ctx_.synchronize();
        nccl_.edp->all_reduce(model_.grads(true), model_.numel(true), parallel::ReduceOp::kSum);
      }
      if (expert_scale != 1.f) kernels::scale_cuda(ctx_, model_.grads(true), expert_scale, model_.numel(true));
    }
    for (int e = 0; e < 2; ++e) kernels::sum_squares_cuda(ctx_, sq_.data() + e, model_.grads(e), model_.numel(e));
    ctx_.synchronize();
    const std::vector<double> h = sq_.download();
    double expert = h[1];
    if (pctx_.ep->size() > 1) pctx_.ep->all_reduce(&expert, 1, parallel::ReduceOp::kSum);
    return std::sqrt(h[0] + expert);
  }

  void scale_gradients(float factor) override {
    for (int e = 0; e < 2; ++e) kernels::scale_cuda(ctx_, model_.grads(e), factor, model_.numel(e));
  }

  void optimizer_step(double lr) override {
    ++t_;
    const optim::AdamWScalars base = optim::adamw_scalars(oc_, lr, t_, false);
    const optim::AdamWScalars decayed = optim::adamw_scalars(oc_, lr, t_, true);
    for (size_t i = 0; i < specs_.size(); ++i) {
      const model::ParamSpec& s = specs_[i];
      const int e = s.expert;
      cuda::bf16* w = model_.compute_weights(e);
      optim::adamw_step_cuda(ctx_, model_.weights(e) + s.offset, m_[e].data() + s.offset, v_[e].data() + s.offset,
                             model_.grads(e) + s.offset, w ? w + s.offset : nullptr, s.numel(),
                             decay_[i] ? decayed : base);
    }
  }

  void to_host(optim::AdamW* opt) override {
    check_tensors(*opt);
    ctx_.synchronize();
    copy_state(opt, cudaMemcpyDeviceToHost);
    opt->restore(t_);  // the step count, and the host model weights rounded from the masters
  }

  void from_host(optim::AdamW& opt) override {
    check_tensors(opt);
    copy_state(&opt, cudaMemcpyHostToDevice);
    model_.refresh_compute_weights();
    t_ = opt.steps_taken();
    ctx_.synchronize();
  }

  double peak_memory_mib() const override {
    return static_cast<double>(cuda::peak_allocated_bytes()) / (1024.0 * 1024.0);
  }
  double device_used_mib() const override { return device_used_mib_; }

  double peak_flops() const override {
    // reference/performance-anchors.md: dense bf16 tensor-core peaks. f32 training runs on the
    // same tensor cores only with TF32, which moekit does not enable: no figure for it.
    if (oc_.precision != optim::Precision::kBf16) return 0.0;
    for (const char* hopper : {"H100", "H200", "H800"})
      if (name_.find(hopper) != std::string::npos) return 989.4e12;
    if (name_.find("A100") != std::string::npos) return 312e12;
    return 0.0;
  }

 private:
  void check_tensors(const optim::AdamW& opt) const {
    MOEKIT_CHECK(opt.tensors().size() == specs_.size(), "device step: the optimizer holds ", opt.tensors().size(),
                 " tensors, the model ", specs_.size(), " (ZeRO-1 slices are not supported on GPUs)");
    for (size_t i = 0; i < specs_.size(); ++i)
      MOEKIT_CHECK(opt.tensors()[i].name == specs_[i].name && opt.tensors()[i].numel == specs_[i].numel(),
                   "device step: optimizer tensor ", i, " is '", opt.tensors()[i].name, "', the model's is '",
                   specs_[i].name, "'");
  }
  // Master weights and both moments of every tensor, between the device arenas and the host
  // optimizer's buffers of the same tensor (`dir` says which way).
  void copy_state(optim::AdamW* opt, cudaMemcpyKind dir) {
    const bool up = dir == cudaMemcpyHostToDevice;
    for (size_t i = 0; i < specs_.size(); ++i) {
      const model::ParamSpec& s = specs_[i];
      const size_t bytes = static_cast<size_t>(s.numel()) * sizeof(float);
      float* dev[3] = {model_.weights(s.expert) + s.offset, m_[s.expert].data() + s.offset,
                       v_[s.expert].data() + s.offset};
      float* host[3] = {opt->master(i), opt->exp_avg(i), opt->exp_avg_sq(i)};
      for (int k = 0; k < 3; ++k)
        MOEKIT_CUDA_CHECK(cudaMemcpy(up ? dev[k] : host[k], up ? host[k] : dev[k], bytes, dir));
    }
  }
  void note_device_used() {
    size_t free_b = 0, total_b = 0;
    MOEKIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    device_used_mib_ = std::max(device_used_mib_, static_cast<double>(total_b - free_b) / (1024.0 * 1024.0));
  }

  // NCCL mirrors of the process groups that move device data; MPI only bootstraps them. Null
  // where the group has one rank.
  struct NcclGroups {
    std::unique_ptr<parallel::Communicator> world, ep, edp;
  };
  static NcclGroups make_groups(parallel::ParallelContext& p) {
    NcclGroups g;  // every rank creates the same groups in the same order (each is a collective)
    if (p.world->size() > 1) g.world = parallel::make_nccl_communicator(*p.world, "world (NCCL)");
    if (p.ep->size() > 1) g.ep = parallel::make_nccl_communicator(*p.ep, "ep (NCCL)");
    if (p.edp->size() > 1) g.edp = parallel::make_nccl_communicator(*p.edp, "edp (NCCL)");
    return g;
  }

  optim::OptimConfig oc_;
  parallel::ParallelContext& pctx_;
  std::vector<model::ParamSpec> specs_;
  std::vector<uint8_t> decay_;
  cuda::Context ctx_;
  NcclGroups nccl_;
  model::GpuModel model_;
  cuda::DeviceArray<float> m_[2], v_[2];
  cuda::DeviceArray<double> sq_ = cuda::DeviceArray<double>(2);  // the two arenas' sums of squares (the gradient norm)
  int64_t t_ = 0;
  double device_used_mib_ = 0;
  std::string name_;
};

}  // namespace

std::unique_ptr<DeviceStep> make_cuda_step(const config::ModelConfig& cfg, const model::ParamStore& layout,
                                           const optim::OptimConfig& optim, parallel::ParallelContext& ctx) {
  return std::make_unique<CudaStep>(cfg, layout, optim, ctx);
}

}  // namespace moekit::train
