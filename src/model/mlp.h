// The SwiGLU MLP over a backend, y = down(silu(gate(x)) * up(x)), no biases: Qwen2's dense MLP
// and the MoE block's shared expert (the routed experts are the backend's grouped op). gate and
// up are one fused (2I, H) block: the ParamStore declares gate_proj and up_proj back to back.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "model/params.h"

namespace moekit::model {

// y (T, H) = beta * y + mlp(x); keeps gu (T, 2I) and act (T, I) for the backward.
void mlp_forward(backend::Backend& be, void* y, float beta, void* gu, void* act, const void* x, const Param& gate_up,
                 const Param& down, int64_t rows, int64_t hidden, int64_t inter);
// dx (T, H) = beta * dx + d/dx; weight gradients accumulate. scratch_dact (T, I) and
// scratch_dgu (T, 2I) are activation buffers.
void mlp_backward(backend::Backend& be, void* dx, float beta, const Param& gate_up, const Param& down, const void* dy,
                  const void* x, const void* gu, const void* act, void* scratch_dact, void* scratch_dgu, int64_t rows,
                  int64_t hidden, int64_t inter);

// The linear layer y = x W^T (+ b) and its backward (dW += dy^T x, db += sum dy, dx = beta dx +
// dy W), in the backend's compute type with f32 weight gradients.
void linear_forward(backend::Backend& be, void* y, const void* x, const Param& w, const Param& b, int64_t rows,
                    int64_t out, int64_t in);
void linear_backward(backend::Backend& be, void* dx, float beta, const Param& w, const Param& b, const void* dy,
                     const void* x, int64_t rows, int64_t out, int64_t in);

}  // namespace moekit::model
