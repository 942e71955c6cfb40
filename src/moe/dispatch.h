// Local token dispatch on the CPU (the CPU backend's dispatch ops): the (token, slot) pairs
// chosen by the router are sorted by expert (counting sort, stable in token order) into a
// permuted buffer in which every expert's rows are contiguous, so each expert is one GEMM chain;
// combine undoes the permutation and weights the expert outputs.
//
// Dropless by default. With a capacity C >= 0 (moe/moe_layer.h: capacity factor) an expert
// keeps its first C pairs in token order and drops the rest (Switch Transformer, Fedus et al.
// 2021; GShard): a dropped pair has row_of = -1, contributes nothing to the combine and gets no
// gradient; the token keeps its other experts (and the shared expert).
#pragma once

#include <cstdint>
#include <vector>

namespace moekit::moe {

// From idx (T*k): row_of (T*k, -1 for a dropped pair), token_of (T*k, first R valid). Returns
// how many pairs chose each expert (before dropping; expert e keeps min(count, capacity) rows).
std::vector<int64_t> dispatch_plan_cpu(int32_t* row_of, int32_t* token_of, const int32_t* idx, int64_t tokens,
                                       int64_t topk, int64_t experts, int64_t capacity);
// Capacity of each expert for `tokens` tokens routed to `topk` of `experts` experts with a
// capacity factor: ceil(factor * tokens * topk / experts); -1 (dropless) when factor <= 0.
int64_t expert_capacity(int64_t tokens, int64_t topk, int64_t experts, double factor);

// xp (rows, H) <- x[src[r]]
void gather_rows_cpu(float* xp, const float* x, const int32_t* src, int64_t rows, int64_t hidden);
// out[dst[r]] (H) <- in[r]
void scatter_rows_cpu(float* out, const float* in, const int32_t* dst, int64_t rows, int64_t hidden);
// out (T, H) = beta * out + sum_j w[t, j] yp[row_of(t, j)] (kept slots, in order j = 0..k-1)
void combine_rows_cpu(float* out, float beta, const float* yp, const float* weights, const int32_t* row_of,
                      int64_t tokens, int64_t topk, int64_t hidden);
// dyp[row] = w dout[t]; dweights[t, j] = dout[t] . yp[row] (0 for a dropped slot)
void combine_rows_backward_cpu(float* dyp, float* dweights, const float* dout, const float* yp, const float* weights,
                               const int32_t* row_of, int64_t tokens, int64_t topk, int64_t hidden);
// dx (T, H) = beta * dx + sum_j dxp[row_of(t, j)] (kept slots)
void dispatch_rows_backward_cpu(float* dx, float beta, const float* dxp, const int32_t* row_of, int64_t tokens,
                                int64_t topk, int64_t hidden);

}  // namespace moekit::moe
