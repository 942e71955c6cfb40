// Rotate-half RoPE on one (x_i, x_{i+d/2}) pair, shared by the CPU and CUDA kernels.
// Forward (sign = 1): y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin; the inverse rotation
// (sign = -1) is the backward, as the rotation is orthogonal.
#pragma once

#include "core/half.h"

namespace moekit::kernels {

// c1/s1: cos and sin at column i, c2/s2 at column i + d/2 (equal in the tables, kept apart so
// the arithmetic matches transformers' `x * cos + rotate_half(x) * sin` element for element).
MOEKIT_HD void rope_pair(float* a, float* b, float c1, float s1, float c2, float s2, float sign) {
  const float x1 = *a, x2 = *b;
  *a = x1 * c1 - sign * x2 * s1;
  *b = x2 * c2 + sign * x1 * s2;
}

}  // namespace moekit::kernels
