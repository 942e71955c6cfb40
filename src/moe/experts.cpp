#include "moe/experts.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/swiglu_mlp.h"

namespace moekit::moe {

namespace {
kernels::MlpWeights expert_weights(const ExpertStack& s, int64_t e) {
  const float* base = s.w + e * s.stride();
  return {base, base + 2 * s.inter * s.hidden};
}

std::vector<int64_t> offsets_of(const int64_t* counts, int64_t n) {
  std::vector<int64_t> off(n + 1, 0);
  for (int64_t e = 0; e < n; ++e) off[e + 1] = off[e] + counts[e];
  return off;
}
}  // namespace

void experts_forward_cpu(float* y, float* gu, float* act, const float* x, const ExpertStack& s,
                         const int64_t* counts) {
  const int64_t H = s.hidden, I = s.inter;
  const std::vector<int64_t> off = offsets_of(counts, s.num);
#pragma omp parallel for schedule(dynamic)
  for (int64_t e = 0; e < s.num; ++e) {
    const int64_t r0 = off[e], n = counts[e];
    if (n == 0) continue;
    kernels::mlp_forward(y + r0 * H, 0.f, gu + r0 * 2 * I, act + r0 * I, x + r0 * H, expert_weights(s, e), n, H, I);
  }
}

void experts_backward_cpu(float* dx, const float* dy, const float* x, const float* gu, const float* act,
                          const ExpertStack& s, const int64_t* counts) {
  const int64_t H = s.hidden, I = s.inter;
  const std::vector<int64_t> off = offsets_of(counts, s.num);
  int64_t max_rows = 0;
  for (int64_t e = 0; e < s.num; ++e) max_rows = std::max(max_rows, counts[e]);
#pragma omp parallel
  {
    std::vector<float> scratch(max_rows * 3 * I);
#pragma omp for schedule(dynamic)
    for (int64_t e = 0; e < s.num; ++e) {
      const int64_t r0 = off[e], n = counts[e];
      if (n == 0) continue;
      float* g = s.g + e * s.stride();
      kernels::mlp_backward(dx + r0 * H, 0.f, {g, g + 2 * I * H}, dy + r0 * H, x + r0 * H, gu + r0 * 2 * I,
                          act + r0 * I, expert_weights(s, e), n, H, I, scratch.data());
    }
  }
}

void experts_forward_oracle(float* out, const float* x, const int32_t* idx, const float* weights, int64_t T,
                            int64_t k, const ExpertStack& s, int64_t capacity) {
  const int64_t H = s.hidden, I = s.inter;
  std::vector<double> h(I);
  std::vector<int64_t> served(s.num, 0);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * H;
    float* o = out + t * H;
    std::fill(o, o + H, 0.f);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = idx[t * k + j];
      if (capacity >= 0 && served[e]++ >= capacity) continue;  // this expert is full
      kernels::MlpWeights w = expert_weights(s, e);
      for (int64_t i = 0; i < I; ++i) {
        double g = 0, u = 0;
        for (int64_t d = 0; d < H; ++d) {
          g += static_cast<double>(w.gate_up[i * H + d]) * xt[d];
          u += static_cast<double>(w.gate_up[(I + i) * H + d]) * xt[d];
        }
        h[i] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int64_t d = 0; d < H; ++d) {
        double y = 0;
        for (int64_t i = 0; i < I; ++i) y += static_cast<double>(w.down[d * I + i]) * h[i];
        o[d] += static_cast<float>(weights[t * k + j] * y);
      }
    }
  }
}

}  // namespace moekit::moe
