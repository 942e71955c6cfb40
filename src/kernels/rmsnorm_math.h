// Per-row RMSNorm math shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>

#include "core/half.h"

namespace moekit::kernels {

MOEKIT_HD float rmsnorm_rstd(float sum_sq, int dim, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);
}

// d/dx of y_i = w_i x_i r with r = (mean(x^2)+eps)^-1/2:
//   dx_i = r * (w_i dy_i - x_i r^2 * mean_j(w_j dy_j x_j))
MOEKIT_HD float rmsnorm_dx(float x, float w, float dy, float rstd, float mean_wdyx) {
  return rstd * (w * dy - x * rstd * rstd * mean_wdyx);
}

}  // namespace moekit::kernels
