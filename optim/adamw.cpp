// AdamW over fp32 master weights, and the gradient norm / clipping that precede it. The
// per-element work runs on the optimizer's backend (backend::Backend::adamw, sum_squares,
// scale); this file decides where the masters live and in what order tensors are visited.
#include <algorithm>
#include <cmath>
#include <set>

#include "core/check.h"
#include "optim/adamw_math.h"
#include "optim/optim.h"

namespace moekit::optim {

// ---- gradient norm and clipping ------------------------------------------------------------

double grad_sq_sum(const std::vector<TensorRef>& tensors, backend::Backend& be) {
  double total = 0;
  for (const auto& t : tensors) total += be.sum_squares(t.g, t.numel);
  return total;
}

double global_grad_norm(const std::vector<TensorRef>& tensors, backend::Backend& be) {
  return std::sqrt(grad_sq_sum(tensors, be));
}

void scale_grads(const std::vector<TensorRef>& tensors, float factor, backend::Backend& be) {
  for (const auto& t : tensors) be.scale(t.g, factor, t.numel);
}

double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0 || !std::isfinite(norm)) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

double clip_grads(const std::vector<TensorRef>& tensors, double max_norm, backend::Backend& be) {
  const double norm = global_grad_norm(tensors, be);
  const double coef = clip_coefficient(norm, max_norm);
  if (coef < 1.0) scale_grads(tensors, static_cast<float>(coef), be);
  return norm;
}

// ---- AdamW ---------------------------------------------------------------------------------

AdamWScalars adamw_scalars(const OptimConfig& c, double lr, int64_t step, bool decay) {
  const double t = static_cast<double>(step);
  AdamWScalars s;
  s.beta1 = static_cast<float>(c.beta1);
  s.one_minus_beta1 = static_cast<float>(1 - c.beta1);
  s.beta2 = static_cast<float>(c.beta2);
  s.one_minus_beta2 = static_cast<float>(1 - c.beta2);
  s.neg_step_size = static_cast<float>(-(lr / (1 - std::pow(c.beta1, t))));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1 - std::pow(c.beta2, t)));
  s.eps = static_cast<float>(c.eps);
  s.decay_keep = decay ? static_cast<float>(1 - lr * c.weight_decay) : 1.f;
  return s;
}

AdamW::AdamW(const OptimConfig& c, std::vector<TensorRef> tensors, backend::Backend& be)
    : cfg_(c), be_(&be), tensors_(std::move(tensors)) {
  cfg_.validate();
  std::set<std::string> names;
  int64_t total = 0;
  bool any_compute = false, all_compute = true;
  for (const auto& t : tensors_) {
    MOEKIT_CHECK(names.insert(t.name).second, "AdamW: parameter '", t.name, "' is listed twice");
    MOEKIT_CHECK(t.numel >= 0, "AdamW: parameter '", t.name, "' has numel ", t.numel);
    MOEKIT_CHECK(t.numel == 0 || (t.w && t.g), "AdamW: parameter '", t.name, "' has no weight or gradient buffer");
    decay_.push_back(applies_weight_decay(cfg_, t.name) ? 1 : 0);
    offset_.push_back(total);
    total += t.numel;
    any_compute |= t.compute != nullptr;
    all_compute &= t.compute != nullptr || t.numel == 0;
  }
  if (any_compute) {
    MOEKIT_CHECK(all_compute, "AdamW: some tensors have a compute copy and some do not");
    MOEKIT_CHECK(cfg_.precision == Precision::kBf16, "AdamW: a bf16 compute copy needs optim.precision bf16, got ",
                 precision_name(cfg_.precision));
    copy_kind_ = backend::RoundCopy::kBf16;
  } else if (cfg_.precision != Precision::kFp32) {
    own_masters_ = true;
    copy_kind_ = cfg_.precision == Precision::kBf16 ? backend::RoundCopy::kF32AsBf16 : backend::RoundCopy::kF32AsF16;
  }
  const size_t bytes = static_cast<size_t>(total) * sizeof(float);
  m_ = backend::Buffer(be, bytes);
  v_ = backend::Buffer(be, bytes);
  be.fill_zero(m_.data(), bytes);
  be.fill_zero(v_.data(), bytes);
  if (own_masters_) {
    master_ = backend::Buffer(be, bytes);
    for (size_t i = 0; i < tensors_.size(); ++i)
      be.copy(master_.as<float>() + offset_[i], tensors_[i].w, static_cast<size_t>(tensors_[i].numel) * sizeof(float));
  }
  sync_model_weights();
}

float* AdamW::master(size_t i) {
  MOEKIT_CHECK(i < tensors_.size(), "AdamW::master: tensor index ", i, " out of range (", tensors_.size(), ")");
  return own_masters_ ? master_.as<float>() + offset_[i] : tensors_[i].w;
}

// The backend's view of every tensor.
std::vector<backend::AdamWTensor> AdamW::work() const {
  std::vector<backend::AdamWTensor> out;
  out.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorRef& t = tensors_[i];
    backend::AdamWTensor a;
    a.p = own_masters_ ? master_.as<float>() + offset_[i] : t.w;
    a.m = m_.as<float>() + offset_[i];
    a.v = v_.as<float>() + offset_[i];
    a.g = t.g;
    a.copy = copy_kind_ == backend::RoundCopy::kBf16 ? t.compute : (own_masters_ ? t.w : nullptr);
    a.n = t.numel;
    a.decay = decay_[i] != 0;
    out.push_back(a);
  }
  return out;
}

int64_t AdamW::step(double lr) {
  MOEKIT_CHECK(std::isfinite(lr) && lr >= 0, "AdamW::step: learning rate ", lr, " must be finite and >= 0");
  ++t_;
  const AdamWScalars base = adamw_scalars(cfg_, lr, t_, false), decayed = adamw_scalars(cfg_, lr, t_, true);
  return be_->adamw(work(), copy_kind_, base, decayed);
}

void AdamW::restore(int64_t steps_taken) {
  MOEKIT_CHECK(steps_taken >= 0, "AdamW::restore: step count ", steps_taken, " must be >= 0");
  t_ = steps_taken;
  sync_model_weights();
}

// The compute copies from the masters: an AdamW pass that leaves p, m and v as they are (zero
// step: decay_keep 1, betas 1, step size 0) and only writes the rounded copies.
void AdamW::sync_model_weights() {
  if (copy_kind_ == backend::RoundCopy::kNone) return;
  std::vector<backend::AdamWTensor> w = work();
  for (auto& a : w) a.m = a.v = nullptr;  // copy only
  AdamWScalars none{};
  be_->adamw(w, copy_kind_, none, none);
}

}  // namespace moekit::optim
