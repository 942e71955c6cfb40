// Local token dispatch: the (token, slot) pairs chosen by the router are sorted by expert
// (counting sort, stable in token order) into a permuted buffer in which every expert's rows
// are contiguous, so each expert is one GEMM. combine() undoes the permutation and weights
// the expert outputs. Dropless: every pair gets a row. The expert-parallel dispatcher builds
// on the same plan (counts become all-to-all split sizes).
#pragma once

#include <cstdint>
#include <vector>

namespace moekit::moe {

struct DispatchPlan {
  int64_t tokens = 0, topk = 0, experts = 0;
  std::vector<int64_t> counts;   // (E) rows per expert
  std::vector<int64_t> offsets;  // (E+1) first row of each expert
  std::vector<int32_t> row_of;   // (T*k) permuted row of pair (t, j)
  std::vector<int32_t> token_of; // (T*k) token of each permuted row
};

DispatchPlan make_dispatch_plan(const int32_t* idx, int64_t tokens, int64_t topk, int64_t experts);

// xp (T*k, H) <- rows of x (T, H) in plan order.
void dispatch_rows(float* xp, const float* x, const DispatchPlan& plan, int64_t hidden);
// out (T, H) = beta*out + sum_j w[t, j] * yp[row_of(t, j)]   (slots summed in order j = 0..k-1)
void combine_rows(float* out, float beta, const float* yp, const float* weights, const DispatchPlan& plan,
                  int64_t hidden);
// Backward of combine: dyp[row] = w * dout[t]; dweights[t, j] = dout[t] . yp[row].
void combine_rows_backward(float* dyp, float* dweights, const float* dout, const float* yp, const float* weights,
                           const DispatchPlan& plan, int64_t hidden);
// Backward of dispatch: dx (T, H) = beta*dx + sum_j dxp[row_of(t, j)].
void dispatch_rows_backward(float* dx, float beta, const float* dxp, const DispatchPlan& plan, int64_t hidden);

}  // namespace moekit::moe
