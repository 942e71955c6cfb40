// Optimisation: AdamW with decoupled weight decay over fp32 master weights, learning-rate
// schedules, global-norm clipping, dynamic loss scaling for fp16 and the NaN/Inf policy.
//
// Precision model (DESIGN.md section 5): the model computes with the weights in its ParamStore.
// With `precision: bf16` (or fp16) the optimizer keeps an fp32 master copy of every tensor and,
// after each update, writes round_to_bf16(master) (or fp16) back into the model's weights, so the
// model runs on bf16-representable values while updates accumulate in fp32. With `fp32` the
// model's weights are the master weights. Gradients are always f32 (accumulated over
// micro-batches by the trainer).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace YAML { class Node; }

namespace moekit::optim {

enum class Schedule { kCosine, kWsd, kConstant };
enum class Precision { kFp32, kBf16, kFp16 };
enum class NanPolicy { kSkip, kStop };

// The `optim:` section of a run config. Every key is public and documented in docs/TRAINING.md.
struct OptimConfig {
  double lr = 3e-4;
  double min_lr = 3e-5;          // floor of cosine / end of the WSD decay
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  // Parameters whose HF name matches one of these substrings get no weight decay. Default:
  // biases, norms and embeddings ("bias", "norm", "embed_tokens").
  std::vector<std::string> no_decay = {"bias", "norm", "embed_tokens"};
  Schedule schedule = Schedule::kCosine;
  int64_t warmup_steps = 0;      // linear warmup from lr/warmup... (see lr_at)
  int64_t decay_steps = 0;       // cosine: steps of the cosine after warmup (0: to the run's end)
  double wsd_decay_fraction = 0.2;  // WSD: last fraction of steps decays linearly to min_lr
  double clip_grad_norm = 1.0;   // <= 0: no clipping
  Precision precision = Precision::kFp32;
  // Dynamic loss scaling (fp16 only).
  double loss_scale_init = 65536.0;
  double loss_scale_growth = 2.0, loss_scale_backoff = 0.5;
  int64_t loss_scale_window = 1000;  // clean steps before the scale grows
  double loss_scale_min = 1.0;
  NanPolicy nan_policy = NanPolicy::kSkip;  // non-finite loss or gradient: skip step / stop run
  int64_t max_skipped_steps = 100;          // kSkip: stop after this many consecutive skips

  // Errors name the key and the value.
  void validate() const;
};

// Parse an `optim:` mapping (may be null/empty: all defaults). Unknown keys are errors naming
// the key path (`optim.<key>`) and `where` (the file).
OptimConfig optim_config_from_yaml(const YAML::Node& node, const std::string& where);
// The resolved section as a YAML mapping string (every key), for config.resolved.yaml.
std::string optim_config_to_yaml(const OptimConfig& c);

// Learning rate of step `step` (0-based: the update that produces weights of step+1) for a run
// of `total_steps`. Warmup: lr * (step + 1) / warmup_steps for step < warmup_steps. Cosine:
// min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * t)), t = (step - warmup) / decay_len clamped to
// [0,1]. WSD: lr until the decay phase, then linear to min_lr. Constant: lr after warmup.
double lr_at(const OptimConfig& c, int64_t step, int64_t total_steps);

// One optimised tensor: a view into the model's ParamStore arenas.
struct TensorRef {
  std::string name;     // HF parameter name
  float* w = nullptr;   // model weights (what forward reads)
  float* g = nullptr;   // f32 gradient
  int64_t numel = 0;
};

// Global L2 norm of the gradients, accumulated in double; NaN/Inf propagate.
double global_grad_norm(const std::vector<TensorRef>& tensors);
// Multiply every gradient by `factor`.
void scale_grads(const std::vector<TensorRef>& tensors, float factor);

// fp16 dynamic loss scaling: multiply the loss (its gradient seed) by scale(); after backward,
// unscale, and update(found_nonfinite): on overflow the step is skipped and the scale backs off,
// after `window` clean steps it grows.
class LossScaler {
 public:
  explicit LossScaler(const OptimConfig& c);
  double scale() const { return scale_; }
  // Returns true when the step must be skipped.
  bool update(bool found_nonfinite);
  int64_t good_steps() const { return good_; }
  void restore(double scale, int64_t good_steps) { scale_ = scale; good_ = good_steps; }

 private:
  double scale_, growth_, backoff_, min_;
  int64_t window_, good_ = 0;
};

class AdamW {
 public:
  // Takes the tensors it updates; with mixed precision it copies the current weights into the
  // fp32 master arena (call after the model's weights are initialised or loaded), then rounds
  // the model's weights to the compute dtype so both agree.
  AdamW(const OptimConfig& c, std::vector<TensorRef> tensors);

  const OptimConfig& config() const { return cfg_; }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  bool decays(size_t i) const { return decay_[i] != 0; }

  // One update with learning rate `lr` (gradients already clipped/unscaled by the caller).
  // Bias correction uses the optimizer's own step counter, incremented here (PyTorch AdamW
  // semantics: p -= lr*wd*p; m,v update; p -= lr * mhat / (sqrt(vhat) + eps)).
  void step(double lr);
  int64_t steps_taken() const { return t_; }

  // State by tensor index, for checkpoints: master weights (the model weights when fp32), first
  // and second moments, each numel floats.
  float* master(size_t i);
  float* exp_avg(size_t i) { return m_.data() + offset_[i]; }
  float* exp_avg_sq(size_t i) { return v_.data() + offset_[i]; }
  // After master weights and moments were overwritten (resume): set the step counter and
  // refresh the model weights from the masters.
  void restore(int64_t steps_taken);

 private:
  void sync_model_weights();

  OptimConfig cfg_;
  std::vector<TensorRef> tensors_;
  std::vector<uint8_t> decay_;
  std::vector<int64_t> offset_;
  std::vector<float> master_, m_, v_;  // master_ empty when fp32
  int64_t t_ = 0;
};

}  // namespace moekit::optim
