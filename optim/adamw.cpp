// AdamW over fp32 master weights, and the gradient norm / clipping that precede it.
//
// Both loops run over fixed chunks of each tensor (kChunk elements), so the work splits the
// same way whatever the thread count: AdamW's per-element math is independent anyway, and the
// gradient norm adds per-chunk double partial sums in chunk order, so it is bit-identical for
// 1 or N threads.
#include <algorithm>
#include <cmath>
#include <set>

#include "core/check.h"
#include "optim/adamw_math.h"
#include "optim/optim.h"

namespace moekit::optim {

namespace {

constexpr int64_t kChunk = 1 << 15;        // elements per unit of parallel work
constexpr int64_t kParallelMin = 1 << 16;  // below this many elements a loop runs on one thread

std::vector<TensorChunk> split(const std::vector<TensorRef>& tensors) {
  std::vector<TensorChunk> out;
  for (size_t i = 0; i < tensors.size(); ++i)
    for (int64_t b = 0; b < tensors[i].numel; b += kChunk) out.push_back({i, b, std::min(b + kChunk, tensors[i].numel)});
  return out;
}

int64_t total_numel(const std::vector<TensorRef>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel;
  return n;
}

// Eight independent double accumulators: the compiler can keep them in vector registers, and
// the order of additions is fixed by the code, not by the thread count.
double sq_sum(const float* g, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(g[i + k]) * g[i + k];
  for (; i < n; ++i) acc[i & 7] += static_cast<double>(g[i]) * g[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Update elements [b, e) of one tensor: p is the fp32 master (the model weights when fp32, w
// then unused); with mixed precision w receives the rounded master.
// The five arrays never overlap (distinct arenas) and the scalars are a local copy: saying so
// lets the loop vectorise without runtime alias checks.
template <int kDtype>
void adamw_range(float* __restrict p, float* __restrict m, float* __restrict v, const float* __restrict g,
                 float* __restrict w, int64_t b, int64_t e, const AdamWScalars s) {
  for (int64_t i = b; i < e; ++i) {
    adamw_element(p + i, m + i, v + i, g[i], s);
    if (kDtype != 0) w[i] = round_to_compute<kDtype>(p[i]);
  }
}

template <int kDtype>
void round_range(float* w, const float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) w[i] = round_to_compute<kDtype>(p[i]);
}

}  // namespace

// ---- gradient norm and clipping ------------------------------------------------------------

double grad_sq_sum(const std::vector<TensorRef>& tensors) {
  const std::vector<TensorChunk> pieces = split(tensors);
  std::vector<double> partial(pieces.size());
  const int64_t np = static_cast<int64_t>(pieces.size());
#pragma omp parallel for schedule(static) if (total_numel(tensors) >= kParallelMin)
  for (int64_t c = 0; c < np; ++c) {
    const TensorChunk& pc = pieces[c];
    partial[c] = sq_sum(tensors[pc.tensor].g + pc.begin, pc.end - pc.begin);
  }
  double total = 0;
  for (double x : partial) total += x;
  return total;
}

double global_grad_norm(const std::vector<TensorRef>& tensors) { return std::sqrt(grad_sq_sum(tensors)); }

void scale_grads(const std::vector<TensorRef>& tensors, float factor) {
  const std::vector<TensorChunk> pieces = split(tensors);
  const int64_t np = static_cast<int64_t>(pieces.size());
#pragma omp parallel for schedule(static) if (total_numel(tensors) >= kParallelMin)
  for (int64_t c = 0; c < np; ++c) {
    float* g = tensors[pieces[c].tensor].g;
    for (int64_t i = pieces[c].begin; i < pieces[c].end; ++i) g[i] *= factor;
  }
}

double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0 || !std::isfinite(norm)) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

double clip_grads(const std::vector<TensorRef>& tensors, double max_norm) {
  const double norm = global_grad_norm(tensors);
  const double coef = clip_coefficient(norm, max_norm);
  if (coef < 1.0) scale_grads(tensors, static_cast<float>(coef));
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

AdamW::AdamW(const OptimConfig& c, std::vector<TensorRef> tensors) : cfg_(c), tensors_(std::move(tensors)) {
  cfg_.validate();
  std::set<std::string> names;
  int64_t total = 0;
  for (const auto& t : tensors_) {
    MOEKIT_CHECK(names.insert(t.name).second, "AdamW: parameter '", t.name, "' is listed twice");
    MOEKIT_CHECK(t.numel >= 0, "AdamW: parameter '", t.name, "' has numel ", t.numel);
    MOEKIT_CHECK(t.numel == 0 || (t.w && t.g), "AdamW: parameter '", t.name, "' has no weight or gradient buffer");
    decay_.push_back(applies_weight_decay(cfg_, t.name) ? 1 : 0);
    offset_.push_back(total);
    total += t.numel;
  }
  chunks_ = split(tensors_);
  m_.assign(total, 0.f);
  v_.assign(total, 0.f);
  if (cfg_.precision != Precision::kFp32) {
    master_.resize(total);
    for (size_t i = 0; i < tensors_.size(); ++i)
      std::copy(tensors_[i].w, tensors_[i].w + tensors_[i].numel, master_.data() + offset_[i]);
    sync_model_weights();
  }
}

float* AdamW::master(size_t i) {
  MOEKIT_CHECK(i < tensors_.size(), "AdamW::master: tensor index ", i, " out of range (", tensors_.size(), ")");
  return master_.empty() ? tensors_[i].w : master_.data() + offset_[i];
}

void AdamW::step(double lr) {
  MOEKIT_CHECK(std::isfinite(lr) && lr >= 0, "AdamW::step: learning rate ", lr, " must be finite and >= 0");
  ++t_;
  const AdamWScalars base = adamw_scalars(cfg_, lr, t_, false), decayed = adamw_scalars(cfg_, lr, t_, true);

  const int64_t nc = static_cast<int64_t>(chunks_.size());
  const bool parallel = static_cast<int64_t>(m_.size()) >= kParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c = 0; c < nc; ++c) {
    const TensorChunk& ch = chunks_[c];
    const TensorRef& tr = tensors_[ch.tensor];
    const int64_t off = offset_[ch.tensor];
    const AdamWScalars& s = decay_[ch.tensor] ? decayed : base;
    float* p = master_.empty() ? tr.w : master_.data() + off;
    float* m = m_.data() + off;
    float* v = v_.data() + off;
    switch (cfg_.precision) {
      case Precision::kFp32: adamw_range<0>(p, m, v, tr.g, nullptr, ch.begin, ch.end, s); break;  // p is w
      case Precision::kBf16: adamw_range<1>(p, m, v, tr.g, tr.w, ch.begin, ch.end, s); break;
      case Precision::kFp16: adamw_range<2>(p, m, v, tr.g, tr.w, ch.begin, ch.end, s); break;
    }
  }
}

void AdamW::restore(int64_t steps_taken) {
  MOEKIT_CHECK(steps_taken >= 0, "AdamW::restore: step count ", steps_taken, " must be >= 0");
  t_ = steps_taken;
  sync_model_weights();
}

void AdamW::sync_model_weights() {
  if (master_.empty()) return;
  const int64_t nc = static_cast<int64_t>(chunks_.size());
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(master_.size()) >= kParallelMin)
  for (int64_t c = 0; c < nc; ++c) {
    const TensorChunk& ch = chunks_[c];
    float* w = tensors_[ch.tensor].w + ch.begin;
    const float* p = master_.data() + offset_[ch.tensor] + ch.begin;
    if (cfg_.precision == Precision::kBf16) round_range<1>(w, p, ch.end - ch.begin);
    else round_range<2>(w, p, ch.end - ch.begin);
  }
}

}  // namespace moekit::optim
