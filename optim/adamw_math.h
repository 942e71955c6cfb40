// The per-element AdamW update (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
// Algorithm 2), shared by the CPU loop and a future CUDA kernel. The order of operations and the
// f32 roundings follow torch.optim.AdamW's single-tensor path, so results agree with PyTorch to
// an ulp or two per step (torch's vectorised kernels may fuse a multiply-add where we round twice).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/half.h"
#include "optim/optim.h"

namespace moekit::optim {

// Step-dependent scalars, formed in double on the host and rounded to f32 once, as torch does
// when it passes Python floats into f32 tensor ops.
struct AdamWScalars {
  float decay_keep;       // 1 - lr * weight_decay (1 for tensors without decay)
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float neg_step_size;    // -lr / (1 - beta1^t)
  float bc2_sqrt;         // sqrt(1 - beta2^t)
  float eps;
};

// The scalars of update number `step` (1-based, after the increment) with learning rate lr, for a
// tensor with or without weight decay: what AdamW::step and the CUDA optimizer both use.
AdamWScalars adamw_scalars(const OptimConfig& c, double lr, int64_t step, bool decay);

// Updates p (the fp32 master), m and v in place; g is the gradient.
MOEKIT_HD void adamw_element(float* p, float* m, float* v, float g, const AdamWScalars& s) {
  const float pd = *p * s.decay_keep;                            // decoupled decay first
  const float mn = *m * s.beta1 + s.one_minus_beta1 * g;         // exp_avg.mul_(b1).add_(g, 1-b1)
  const float vn = *v * s.beta2 + s.one_minus_beta2 * g * g;     // exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2)
  const float denom = sqrtf(vn) / s.bc2_sqrt + s.eps;       // eps after sqrt(vhat)
  *p = pd + s.neg_step_size * mn / denom;                        // addcdiv_(m, denom, -step_size)
  *m = mn;
  *v = vn;
}

// bf16_to_f32(f32_to_bf16(x)) without a branch, so the update loop vectorises: round to nearest
// even on the upper 16 bits; a NaN keeps its upper bits and becomes quiet (bit 22), as in half.h.
MOEKIT_HD float round_bf16_select(float x) {
  const uint32_t u = f32_bits(x);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const uint32_t nan = (u | 0x00400000u) & 0xffff0000u;
  return bits_f32((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// The value the model computes with: the master rounded to the compute dtype (0 = f32, 1 = bf16,
// 2 = f16), round to nearest even.
template <int kDtype>
MOEKIT_HD float round_to_compute(float x) {
  if (kDtype == 1) return round_bf16_select(x);
  if (kDtype == 2) return f16_to_f32(f32_to_f16(x));
  return x;
}

}  // namespace moekit::optim
