// SwiGLU MLP on the CPU, y = down(silu(gate(x)) * up(x)), no biases: one routed expert's chain
// in the CPU backend's grouped expert op (moe/experts.cpp), single-threaded, as
// the experts run as parallel tasks. gate and up are one fused (2I, H) block: the ParamStore
// declares gate_proj and up_proj back to back, so [W_gate; W_up] is contiguous. The model's
// own MLPs (dense, shared expert) go through the backend (model/mlp.h).
#pragma once

#include <cstdint>

namespace moekit::kernels {

struct MlpWeights {
  const float* gate_up;  // (2I, H)
  const float* down;     // (H, I)
};
struct MlpGrads {
  float* gate_up;  // (2I, H), accumulated
  float* down;     // (H, I), accumulated
};

// Saved activations: gu (T, 2I) pre-activation, act (T, I) = silu(g) * u.
// y (T, H) = beta * y + mlp(x). Single-threaded: the caller runs experts in parallel.
void mlp_forward(float* y, float beta, float* gu, float* act, const float* x, const MlpWeights& w, int64_t rows,
                 int64_t hidden, int64_t inter);

// dx (T, H) = beta * dx + d/dx; grads accumulate. scratch: (T, I) + (T, 2I) floats.
void mlp_backward(float* dx, float beta, const MlpGrads& g, const float* dy, const float* x, const float* gu,
                  const float* act, const MlpWeights& w, int64_t rows, int64_t hidden, int64_t inter, float* scratch);

}  // namespace moekit::kernels
