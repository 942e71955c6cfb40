// Routed experts over a dispatched buffer: expert e runs a SwiGLU MLP on its contiguous rows
// [offsets[e], offsets[e+1]). Experts are independent, so the CPU backend runs them as parallel
// tasks (one single-threaded GEMM chain each) rather than threading each small GEMM.
// experts_forward_oracle is the sequential per-token reference the tests compare against.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/dispatch.h"

namespace moekit::moe {

// Expert weights: expert e's fused [gate; up] (2I, H) at stack + e*3*I*H, then its down (H, I).
struct ExpertStack {
  const float* w = nullptr;  // values
  float* g = nullptr;        // grads (accumulated)
  int64_t num = 0, hidden = 0, inter = 0;
  int64_t stride() const { return 3 * inter * hidden; }
};

struct ExpertsCache {
  std::vector<float> gu;   // (R, 2I)
  std::vector<float> act;  // (R, I)
};

// yp (R, H) <- xp (R, H), R = plan rows.
void experts_forward(float* yp, ExpertsCache* c, const float* xp, const ExpertStack& s, const DispatchPlan& plan);
// dxp (R, H) overwritten; expert grads accumulate.
void experts_backward(float* dxp, const float* dyp, const float* xp, const ExpertsCache& c, const ExpertStack& s,
                      const DispatchPlan& plan);

// Sequential oracle: out (T, H) = sum_j w[t, j] * expert_{idx[t, j]}(x_t), token by token.
void experts_forward_oracle(float* out, const float* x, const int32_t* idx, const float* weights, int64_t tokens,
                            int64_t topk, const ExpertStack& s);

}  // namespace moekit::moe
