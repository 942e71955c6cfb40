#include "moe/dispatch.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"

namespace moekit::moe {

int64_t expert_capacity(int64_t tokens, int64_t topk, int64_t experts, double factor) {
  if (!(factor > 0)) return -1;
  // An expert receives each token at most once, so a capacity of `tokens` drops nothing; the
  // clamp also keeps a huge factor from overflowing the conversion.
  const double c = std::ceil(factor * static_cast<double>(tokens * topk) / static_cast<double>(experts));
  return c >= static_cast<double>(tokens) ? tokens : static_cast<int64_t>(c);
}

std::vector<int64_t> dispatch_plan_cpu(int32_t* row_of, int32_t* token_of, const int32_t* idx, int64_t T, int64_t k,
                                       int64_t E, int64_t capacity) {
  std::vector<int64_t> chosen(E, 0), counts(E, 0), offsets(E + 1, 0), seen(E, 0);
  for (int64_t i = 0; i < T * k; ++i) {
    MOEKIT_CHECK(idx[i] >= 0 && idx[i] < E, "dispatch: expert index ", idx[i], " out of range [0, ", E, ")");
    ++chosen[idx[i]];
  }
  for (int64_t e = 0; e < E; ++e) {
    counts[e] = capacity >= 0 ? std::min(chosen[e], capacity) : chosen[e];
    offsets[e + 1] = offsets[e] + counts[e];
  }
  for (int64_t i = 0; i < T * k; ++i) {
    const int32_t e = idx[i];
    const int64_t rank = seen[e]++;
    if (rank >= counts[e]) {  // beyond capacity: dropped
      row_of[i] = -1;
      continue;
    }
    const int64_t row = offsets[e] + rank;
    row_of[i] = static_cast<int32_t>(row);
    token_of[row] = static_cast<int32_t>(i / k);
  }
  return chosen;
}

void gather_rows_cpu(float* xp, const float* x, const int32_t* src, int64_t rows, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) std::memcpy(xp + r * H, x + static_cast<int64_t>(src[r]) * H, H * sizeof(float));
}

void scatter_rows_cpu(float* out, const float* in, const int32_t* dst, int64_t rows, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + static_cast<int64_t>(dst[r]) * H, in + r * H, H * sizeof(float));
}

void combine_rows_cpu(float* out, float beta, const float* yp, const float* w, const int32_t* row_of, int64_t T,
                      int64_t k, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* o = out + t * H;
    if (beta == 0.f) std::memset(o, 0, H * sizeof(float));
    else if (beta != 1.f)
      for (int64_t i = 0; i < H; ++i) o[i] *= beta;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = row_of[t * k + j];
      if (row < 0) continue;
      const float* y = yp + static_cast<int64_t>(row) * H;
      const float wj = w[t * k + j];
      for (int64_t i = 0; i < H; ++i) o[i] += wj * y[i];
    }
  }
}

void combine_rows_backward_cpu(float* dyp, float* dw, const float* dout, const float* yp, const float* w,
                               const int32_t* row_of, int64_t T, int64_t k, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* d = dout + t * H;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = row_of[t * k + j];
      if (row < 0) {
        dw[t * k + j] = 0.f;
        continue;
      }
      const float* y = yp + static_cast<int64_t>(row) * H;
      float* dy = dyp + static_cast<int64_t>(row) * H;
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

void dispatch_rows_backward_cpu(float* dx, float beta, const float* dxp, const int32_t* row_of, int64_t T, int64_t k,
                                int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* o = dx + t * H;
    if (beta == 0.f) std::memset(o, 0, H * sizeof(float));
    else if (beta != 1.f)
      for (int64_t i = 0; i < H; ++i) o[i] *= beta;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = row_of[t * k + j];
      if (row < 0) continue;
      const float* g = dxp + static_cast<int64_t>(row) * H;
      for (int64_t i = 0; i < H; ++i) o[i] += g[i];
    }
  }
}

}  // namespace moekit::moe
