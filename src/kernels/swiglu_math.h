// SiLU-gated product and its derivatives, shared by CPU and CUDA.
#pragma once

#include <cmath>

#include "core/half.h"

namespace moekit::kernels {

MOEKIT_HD float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
MOEKIT_HD float swiglu(float g, float u) { return g * sigmoidf_(g) * u; }
// d silu(g)/dg = s + g s (1 - s), s = sigmoid(g)
MOEKIT_HD void swiglu_grad(float g, float u, float dh, float* dg, float* du) {
  float s = sigmoidf_(g);
  *du = dh * g * s;
  *dg = dh * u * (s + g * s * (1.0f - s));
}

}  // namespace moekit::kernels
