// Per-element cross-entropy math shared by the CPU kernel (double accumulation) and the CUDA
// kernel (f32 block reductions): loss = lse - z_target, d loss / d z_i = softmax_i - [i == target].
#pragma once

#include <cmath>

#include "core/half.h"

namespace moekit::kernels {

template <typename Acc>
MOEKIT_HD Acc ce_exp(Acc x);
template <>
MOEKIT_HD float ce_exp<float>(float x) { return expf(x); }
template <>
MOEKIT_HD double ce_exp<double>(double x) { return exp(x); }

// softmax_i * scale from the row's logsumexp, in the accumulation type, rounded once to f32.
template <typename Acc>
MOEKIT_HD float ce_grad(float z, Acc lse, float scale) {
  return scale * static_cast<float>(ce_exp<Acc>(static_cast<Acc>(z) - lse));
}

}  // namespace moekit::kernels
