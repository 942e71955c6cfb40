// SwiGLU gating (Shazeer 2020): h = silu(g) * u, the inner product of Qwen2's MLP and experts.
// g and u come packed per row as one fused gate/up projection produces them: gu (rows, 2*w)
// holds g in columns [0, w) and u in [w, 2w).
#pragma once

#include <cstdint>

namespace moekit::kernels {

// h (rows, w) <- gu (rows, 2w)
void swiglu_forward(float* h, const float* gu, int64_t rows, int64_t width);
// dgu (rows, 2w), overwritten <- dh (rows, w), gu
void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t rows, int64_t width);

}  // namespace moekit::kernels
