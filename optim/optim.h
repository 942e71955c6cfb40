// Optimisation: AdamW with decoupled weight decay over fp32 master weights, learning-rate
// schedules, global-norm clipping, dynamic loss scaling for fp16 and the NaN/Inf policy.
//
// Precision model (DESIGN.md section 5): the model computes with the weights in its ParamStore.
// With `precision: bf16` (or fp16) the optimizer keeps an fp32 master copy of every tensor and,
// after each update, writes round_to_bf16(master) (or fp16) back into the model's weights, so the
// model runs on bf16-representable values while updates accumulate in fp32. With `fp32` the
// model's weights are the master weights. Gradients are always f32 (accumulated over
// micro-batches by the trainer).
//
// One training step, as the trainer drives it:
//   loss = forward(...) * scaler.scale()   (fp16 only; scale 1 otherwise) ; backward
//   scale_grads(tensors, 1 / scale)        (fp16 only)
//   norm = clip_grads(tensors, cfg.clip_grad_norm)        // pre-clip norm, NaN/Inf propagate
//   fp16: if (scaler.update(!isfinite(norm))) skip        // overflow: back off, skip, not a NaN event
//   switch (guard.check(isfinite(loss) && isfinite(norm))) // NaN policy: apply / skip / stop
//   adamw.step(lr_at(cfg, step, total_steps))
// Files: optim_config.cpp (config, YAML), schedule.cpp (lr_at, LossScaler, NanGuard),
// adamw.cpp (AdamW, gradient norm and clipping), adamw_math.h (the per-element update).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"

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
  // Parameters whose HF name contains one of these substrings get no weight decay. Default:
  // biases, norms and embeddings ("bias", "norm", "embed_tokens").
  std::vector<std::string> no_decay = {"bias", "norm", "embed_tokens"};
  Schedule schedule = Schedule::kCosine;
  int64_t warmup_steps = 0;      // linear warmup: lr * (step + 1) / warmup_steps (see lr_at)
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
  int64_t max_skipped_steps = 100;          // kSkip: stop when more steps than this are skipped in a row
  double max_skipped_fraction = 0.1;        // kSkip: a run that skipped more of its steps ends with an error

  // Errors name the key (`optim.<key>`) and the value. warmup_steps larger than the run is
  // allowed (the learning rate then never reaches `lr`); the run length is not known here.
  void validate() const;
};

// Parse an `optim:` mapping (may be null/empty: all defaults), then validate(). Unknown keys and
// invalid values are errors naming the key path (`optim.<key>`) and `where` (the file).
OptimConfig optim_config_from_yaml(const YAML::Node& node, const std::string& where);
// The resolved section as a YAML mapping string (every key), for config.resolved.yaml;
// optim_config_from_yaml(YAML::Load(s)) gives the same config back.
std::string optim_config_to_yaml(const OptimConfig& c);

// Spellings used in YAML: "cosine" | "wsd" | "constant", "fp32" | "bf16" | "fp16", "skip" | "stop".
const char* schedule_name(Schedule s);
const char* precision_name(Precision p);
const char* nan_policy_name(NanPolicy p);

// False when the HF parameter name contains one of c.no_decay (plain substring match), e.g.
// "model.layers.0.self_attn.q_proj.bias", "model.norm.weight", "model.embed_tokens.weight".
bool applies_weight_decay(const OptimConfig& c, const std::string& name);

// Learning rate of step `step` (0-based: the update that produces weights of step+1) for a run
// of `total_steps`. Warmup: lr * (step + 1) / warmup_steps for step < warmup_steps. After it,
// with s = step - warmup_steps:
//   cosine:   min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * t)), t = min(1, s / L),
//             L = decay_steps, or total_steps - warmup_steps when decay_steps is 0 (at least 1)
//   wsd:      lr until D = max(warmup, total_steps - round(wsd_decay_fraction * total_steps)),
//             then lr + (min_lr - lr) * min(1, (step - D) / (total_steps - D))
//   constant: lr
// Each decay reaches min_lr at step total_steps (the end of the run), so the last update uses a
// value one decay step above it.
double lr_at(const OptimConfig& c, int64_t step, int64_t total_steps);

// One optimised tensor: a view into the model's ParamStore arenas (device memory of the
// optimizer's backend).
struct TensorRef {
  std::string name;        // HF parameter name
  float* w = nullptr;      // model weights, f32 (what forward reads)
  float* g = nullptr;      // f32 gradient
  int64_t numel = 0;
  void* compute = nullptr;  // the GEMM copy of w in a non-f32 compute dtype (bf16 devices), or null
};

// Sum of squared gradients in double (what a data/expert-parallel group all-reduces before the
// square root), tensor by tensor in order, each in fixed chunks (backend::Backend::sum_squares):
// the same bits whatever the thread count. NaN/Inf propagate.
double grad_sq_sum(const std::vector<TensorRef>& tensors, backend::Backend& be = backend::cpu());
// Global L2 norm of the gradients: sqrt(grad_sq_sum).
double global_grad_norm(const std::vector<TensorRef>& tensors, backend::Backend& be = backend::cpu());
// Multiply every gradient by `factor`.
void scale_grads(const std::vector<TensorRef>& tensors, float factor, backend::Backend& be = backend::cpu());
// torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0
// or norm is not finite (such a step is skipped, not clipped).
double clip_coefficient(double norm, double max_norm);
// Global-norm clipping: returns the norm before clipping and scales the gradients by
// clip_coefficient(norm, max_norm) when that is below 1.
double clip_grads(const std::vector<TensorRef>& tensors, double max_norm, backend::Backend& be = backend::cpu());

// fp16 dynamic loss scaling: multiply the loss (its gradient seed) by scale(); after backward,
// unscale, and update(found_nonfinite): on overflow the step is skipped and the scale backs off
// (never below loss_scale_min), after `window` clean steps in a row it grows. Same rule as
// torch.cuda.amp.GradScaler, plus the floor.
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

// The NaN/Inf policy for a step whose loss or gradient norm is not finite: skip it (kSkip; the
// run stops once more than max_skipped_steps steps in a row were not finite) or stop (kStop).
// The trainer logs every skip and the reason for a stop.
enum class StepAction { kApply, kSkip, kStop };
class NanGuard {
 public:
  explicit NanGuard(const OptimConfig& c) : policy_(c.nan_policy), max_in_a_row_(c.max_skipped_steps) {}
  StepAction check(bool finite);
  int64_t skipped_in_a_row() const { return in_a_row_; }
  int64_t skipped_total() const { return total_; }
  void restore(int64_t in_a_row, int64_t total) { in_a_row_ = in_a_row; total_ = total; }

 private:
  NanPolicy policy_;
  int64_t max_in_a_row_, in_a_row_ = 0, total_ = 0;
};

class AdamW {
 public:
  // Takes the tensors it updates (device memory of `be`). Where the masters live follows the
  // precision model above:
  //  - fp32: the model's weights are the masters;
  //  - bf16/fp16 with f32 compute (the CPU): the optimizer keeps f32 masters (copied from the
  //    weights: call after they are initialised or loaded) and writes the rounded values into
  //    the model's weights after each update;
  //  - bf16 with a bf16 compute copy (TensorRef::compute, a bf16 device model): the model's f32
  //    weights are the masters and the rounded values go to the compute copy.
  // Names must be unique.
  AdamW(const OptimConfig& c, std::vector<TensorRef> tensors, backend::Backend& be = backend::cpu());

  const OptimConfig& config() const { return cfg_; }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  bool decays(size_t i) const { return decay_[i] != 0; }
  backend::Backend& backend() const { return *be_; }

  // One update with learning rate `lr` (gradients already clipped/unscaled by the caller).
  // Bias correction uses the optimizer's own step counter, incremented here (PyTorch AdamW
  // semantics: p -= lr*wd*p; m,v update; p -= lr * mhat / (sqrt(vhat) + eps)), in f32 with the
  // scalars formed in double as torch.optim.AdamW (foreach=False) does. Returns the number of
  // elements whose updated master weight or second moment is not finite (0 in a healthy run; the
  // trainer stops on any, and optim/finite.h names the tensor).
  int64_t step(double lr);
  int64_t steps_taken() const { return t_; }

  // State by tensor index (device memory), for checkpoints: master weights (the model weights
  // when they are the masters), first and second moments, each numel floats.
  float* master(size_t i);
  float* exp_avg(size_t i) { return m_.as<float>() + offset_[i]; }
  float* exp_avg_sq(size_t i) { return v_.as<float>() + offset_[i]; }
  // After master weights and moments were overwritten (resume): set the step counter and
  // refresh the model's compute weights from the masters.
  void restore(int64_t steps_taken);

 private:
  void sync_model_weights();
  std::vector<backend::AdamWTensor> work() const;

  OptimConfig cfg_;
  backend::Backend* be_;
  std::vector<TensorRef> tensors_;
  std::vector<uint8_t> decay_;
  std::vector<int64_t> offset_;
  backend::RoundCopy copy_kind_ = backend::RoundCopy::kNone;
  bool own_masters_ = false;
  backend::Buffer master_, m_, v_;  // master_ unused unless own_masters_
  int64_t t_ = 0;
};

}  // namespace moekit::optim
