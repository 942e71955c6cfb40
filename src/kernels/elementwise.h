// Small CPU kernels of the backend interface that are not a layer of their own: element-wise
// adds, biases, the embedding, the shared-expert gate, and the reductions over parameter arenas
// (gradient norms, finiteness, fp16 rounding). The CUDA twins are in kernels_cuda.h.
#pragma once

#include <cstdint>

namespace moekit::kernels {

// out (n) <- a + b (out may alias a or b)
void add_cpu(float* out, const float* a, const float* b, int64_t n);
// y (rows, cols) += bias (cols)
void add_bias_cpu(float* y, const float* bias, int64_t rows, int64_t cols);
// dbias (cols) += column sums of dy (rows, cols), rows in order
void bias_grad_cpu(float* dbias, const float* dy, int64_t rows, int64_t cols);

// x (T, H) <- table[ids[t]] ; dtable[ids[t]] += dx[t] (in token order)
void embedding_forward_cpu(float* x, const float* table, const int64_t* ids, int64_t tokens, int64_t hidden);
void embedding_backward_cpu(float* dtable, const float* dx, const int64_t* ids, int64_t tokens, int64_t hidden);

// Gated shared expert: gate (T) holds logits a_t and receives g_t = sigmoid(a_t);
// y (T, H) += g_t s_t. Backward: ds <- g dy ; da (T) <- (dy_t . s_t) g_t (1 - g_t).
void sigmoid_gate_forward_cpu(float* y, float* gate, const float* s, int64_t tokens, int64_t hidden);
void sigmoid_gate_backward_cpu(float* ds, float* da, const float* dy, const float* s, const float* gate,
                               int64_t tokens, int64_t hidden);

// x (n) *= factor
void scale_cpu(float* x, float factor, int64_t n);
// Sum of squares in f64 over fixed chunks added in order: the same bits for any thread count,
// so every replica computes the same norm and clips the same way. NaN/Inf propagate.
double sum_squares_cpu(const float* x, int64_t n);
// Elements that are NaN or +-Inf.
int64_t count_nonfinite_cpu(const float* x, int64_t n);
// x <- f16(x * s) / s (round to nearest even); true when a rounded value is not finite.
bool round_through_f16_cpu(float* x, float s, int64_t n);

}  // namespace moekit::kernels
