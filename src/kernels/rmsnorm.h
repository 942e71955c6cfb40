// RMSNorm (Zhang & Sennrich 2019) as Qwen2 computes it: y = w * x / sqrt(mean(x^2) + eps),
// statistics in f32. Forward saves rstd (one per row) for the backward.
#pragma once

#include <cstdint>

namespace moekit::kernels {

// y (T, D), rstd (T) <- x (T, D), w (D)
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim, float eps);
// dx (T, D) (overwritten, or accumulated when accumulate), dw (D) accumulated <- dy, x, w, rstd
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t rows, int64_t dim, bool accumulate);

}  // namespace moekit::kernels
