#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/half.h"

namespace moekit::kernels {

namespace {
constexpr int64_t kChunk = 8192;          // elements per unit of a reduction
constexpr int64_t kParallelMin = 1 << 16;  // below this a loop runs on one thread
}  // namespace

void add_cpu(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void add_bias_cpu(float* y, const float* bias, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < cols; ++i) y[t * cols + i] += bias[i];
}

void bias_grad_cpu(float* dbias, const float* dy, int64_t rows, int64_t cols) {
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < cols; ++i) dbias[i] += dy[t * cols + i];
}

void embedding_forward_cpu(float* x, const float* table, const int64_t* ids, int64_t T, int64_t H) {
#pragma omp parallel for schedule(static) if (T * H >= kParallelMin)
  for (int64_t t = 0; t < T; ++t) std::memcpy(x + t * H, table + ids[t] * H, H * sizeof(float));
}

void embedding_backward_cpu(float* dtable, const float* dx, const int64_t* ids, int64_t T, int64_t H) {
  for (int64_t t = 0; t < T; ++t) {
    float* g = dtable + ids[t] * H;
    const float* d = dx + t * H;
    for (int64_t i = 0; i < H; ++i) g[i] += d[i];
  }
}

void sigmoid_gate_forward_cpu(float* y, float* gate, const float* s, int64_t T, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float g = 1.f / (1.f + std::exp(-gate[t]));
    gate[t] = g;  // the backward needs only the sigmoid output
    for (int64_t i = 0; i < H; ++i) y[t * H + i] += g * s[t * H + i];
  }
}

void sigmoid_gate_backward_cpu(float* ds, float* da, const float* dy, const float* s, const float* gate, int64_t T,
                               int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float g = gate[t];
    float dot = 0.f;
    for (int64_t i = 0; i < H; ++i) {
      dot += dy[t * H + i] * s[t * H + i];
      ds[t * H + i] = g * dy[t * H + i];
    }
    da[t] = dot * g * (1.f - g);
  }
}

void scale_cpu(float* x, float factor, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

double sum_squares_cpu(const float* x, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0;
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) s += static_cast<double>(x[i]) * x[i];
    part[c] = s;
  }
  double s = 0;
  for (double p : part) s += p;
  return s;
}

int64_t count_nonfinite_cpu(const float* x, int64_t n) {
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) bad += std::isfinite(x[i]) ? 0 : 1;
  return bad;
}

bool round_through_f16_cpu(float* x, float s, int64_t n) {
  int overflow = 0;
#pragma omp parallel for schedule(static) reduction(| : overflow) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float h = f16_to_f32(f32_to_f16(x[i] * s));
    overflow |= std::isfinite(h) ? 0 : 1;
    x[i] = h / s;
  }
  return overflow != 0;
}

}  // namespace moekit::kernels
