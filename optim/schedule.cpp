// Learning-rate schedules, fp16 dynamic loss scaling and the NaN/Inf step policy: the small
// per-step decisions around the AdamW update.
//
// Cosine: Loshchilov & Hutter, "SGDR" (2017), without restarts, after a linear warmup.
// WSD (warmup-stable-decay): Hu et al., "MiniCPM" (2024), with a linear decay over the last
// fraction of the run. Dynamic loss scaling: Micikevicius et al., "Mixed Precision Training"
// (2018), with torch.cuda.amp.GradScaler's update rule.
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "optim/optim.h"

namespace moekit::optim {

constexpr double kPi = 3.14159265358979323846;

double lr_at(const OptimConfig& c, int64_t step, int64_t total_steps) {
  MOEKIT_CHECK(step >= 0, "lr_at: step ", step, " must be >= 0");
  MOEKIT_CHECK(total_steps > 0, "lr_at: total_steps ", total_steps, " must be > 0");
  const int64_t warmup = c.warmup_steps;
  if (step < warmup) return c.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  switch (c.schedule) {
    case Schedule::kConstant:
      return c.lr;
    case Schedule::kCosine: {
      const int64_t len = std::max<int64_t>(1, c.decay_steps > 0 ? c.decay_steps : total_steps - warmup);
      const double t = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(len));
      return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + std::cos(kPi * t));
    }
    case Schedule::kWsd: {
      const int64_t decay_len = std::llround(c.wsd_decay_fraction * static_cast<double>(total_steps));
      const int64_t start = std::max(warmup, total_steps - decay_len);
      if (step < start) return c.lr;
      const int64_t len = total_steps - start;
      const double t = len > 0 ? std::min(1.0, static_cast<double>(step - start) / static_cast<double>(len)) : 1.0;
      return c.lr + (c.min_lr - c.lr) * t;
    }
  }
  MOEKIT_FAIL("lr_at: unknown schedule ", static_cast<int>(c.schedule));
}

LossScaler::LossScaler(const OptimConfig& c)
    : scale_(c.loss_scale_init),
      growth_(c.loss_scale_growth),
      backoff_(c.loss_scale_backoff),
      min_(c.loss_scale_min),
      window_(c.loss_scale_window) {}

bool LossScaler::update(bool found_nonfinite) {
  if (found_nonfinite) {
    scale_ = std::max(min_, scale_ * backoff_);
    good_ = 0;
    return true;
  }
  if (++good_ >= window_) {
    scale_ *= growth_;
    good_ = 0;
  }
  return false;
}

StepAction NanGuard::check(bool finite) {
  if (finite) {
    in_a_row_ = 0;
    return StepAction::kApply;
  }
  ++in_a_row_;
  ++total_;
  if (policy_ == NanPolicy::kStop || in_a_row_ > max_in_a_row_) return StepAction::kStop;
  return StepAction::kSkip;
}

}  // namespace moekit::optim
