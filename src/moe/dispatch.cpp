#include "moe/dispatch.h"

#include <cstring>

#include "core/check.h"

namespace moekit::moe {

DispatchPlan make_dispatch_plan(const int32_t* idx, int64_t T, int64_t k, int64_t E) {
  DispatchPlan p;
  p.tokens = T;
  p.topk = k;
  p.experts = E;
  p.counts.assign(E, 0);
  p.offsets.assign(E + 1, 0);
  p.row_of.resize(T * k);
  p.token_of.resize(T * k);
  for (int64_t i = 0; i < T * k; ++i) {
    MOEKIT_CHECK(idx[i] >= 0 && idx[i] < E, "dispatch: expert index ", idx[i], " out of range [0, ", E, ")");
    ++p.counts[idx[i]];
  }
  for (int64_t e = 0; e < E; ++e) p.offsets[e + 1] = p.offsets[e] + p.counts[e];
  std::vector<int64_t> next(p.offsets.begin(), p.offsets.end() - 1);
  for (int64_t i = 0; i < T * k; ++i) {
    int64_t row = next[idx[i]]++;
    p.row_of[i] = static_cast<int32_t>(row);
    p.token_of[row] = static_cast<int32_t>(i / k);
  }
  return p;
}

void dispatch_rows(float* xp, const float* x, const DispatchPlan& p, int64_t H) {
  const int64_t rows = p.tokens * p.topk;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) std::memcpy(xp + r * H, x + static_cast<int64_t>(p.token_of[r]) * H, H * sizeof(float));
}

void combine_rows(float* out, float beta, const float* yp, const float* w, const DispatchPlan& p, int64_t H) {
  const int64_t k = p.topk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.tokens; ++t) {
    float* o = out + t * H;
    if (beta == 0.f) std::memset(o, 0, H * sizeof(float));
    for (int64_t j = 0; j < k; ++j) {
      const float* y = yp + static_cast<int64_t>(p.row_of[t * k + j]) * H;
      const float wj = w[t * k + j];
      for (int64_t i = 0; i < H; ++i) o[i] += wj * y[i];
    }
  }
}

void combine_rows_backward(float* dyp, float* dw, const float* dout, const float* yp, const float* w,
                           const DispatchPlan& p, int64_t H) {
  const int64_t k = p.topk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.tokens; ++t) {
    const float* d = dout + t * H;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t row = p.row_of[t * k + j];
      const float* y = yp + row * H;
      float* dy = dyp + row * H;
      const float wj = w[t * k + j];
      float dot = 0.f;
      for (int64_t i = 0; i < H; ++i) {
        dot += d[i] * y[i];
        dy[i] = wj * d[i];
      }
      dw[t * k + j] = dot;
    }
  }
}

void dispatch_rows_backward(float* dx, float beta, const float* dxp, const DispatchPlan& p, int64_t H) {
  const int64_t k = p.topk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.tokens; ++t) {
    float* o = dx + t * H;
    if (beta == 0.f) std::memset(o, 0, H * sizeof(float));
    for (int64_t j = 0; j < k; ++j) {
      const float* g = dxp + static_cast<int64_t>(p.row_of[t * k + j]) * H;
      for (int64_t i = 0; i < H; ++i) o[i] += g[i];
    }
  }
}

}  // namespace moekit::moe
