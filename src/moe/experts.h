// Routed experts on the CPU (the CPU backend's grouped expert ops): expert e runs a SwiGLU MLP
// on its contiguous rows of a buffer grouped by expert. Experts are independent, so the CPU runs
// them as parallel tasks (one single-threaded GEMM chain each) rather than threading each small
// GEMM. experts_forward_oracle is the sequential per-token reference the tests compare against.
#pragma once

#include <cstdint>

namespace moekit::moe {

// Expert weights: expert e's fused [gate; up] (2I, H) at stack + e*3*I*H, then its down (H, I).
struct ExpertStack {
  const float* w = nullptr;  // values
  float* g = nullptr;        // grads (accumulated)
  int64_t num = 0, hidden = 0, inter = 0;
  int64_t stride() const { return 3 * inter * hidden; }
};

// y (R, H) <- x (R, H), R = sum(counts); gu (R, 2I), act (R, I) kept for the backward.
void experts_forward_cpu(float* y, float* gu, float* act, const float* x, const ExpertStack& s, const int64_t* counts);
// dx (R, H) overwritten; expert grads (s.g) accumulate.
void experts_backward_cpu(float* dx, const float* dy, const float* x, const float* gu, const float* act,
                          const ExpertStack& s, const int64_t* counts);

// Sequential oracle: out (T, H) = sum_j w[t, j] * expert_{idx[t, j]}(x_t), token by token, in
// f64. With capacity >= 0 an expert serves only its first `capacity` (token, slot) pairs in
// token order (the rest are dropped), decided here independently of the dispatcher.
void experts_forward_oracle(float* out, const float* x, const int32_t* idx, const float* weights, int64_t tokens,
                            int64_t topk, const ExpertStack& s, int64_t capacity = -1);

}  // namespace moekit::moe
