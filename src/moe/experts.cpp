#include "moe/experts.h"

#include <algorithm>
#include <cmath>

#include "model/mlp.h"

namespace moekit::moe {

namespace {
model::MlpWeights expert_weights(const ExpertStack& s, int64_t e) {
  const float* base = s.w + e * s.stride();
  return {base, base + 2 * s.inter * s.hidden};
}
}  // namespace

void experts_forward(float* yp, ExpertsCache* c, const float* xp, const ExpertStack& s, const DispatchPlan& plan) {
  const int64_t R = plan.offsets.back(), H = s.hidden, I = s.inter;
  c->gu.resize(R * 2 * I);
  c->act.resize(R * I);
#pragma omp parallel for schedule(dynamic)
  for (int64_t e = 0; e < s.num; ++e) {
    const int64_t r0 = plan.offsets[e], n = plan.counts[e];
    if (n == 0) continue;
    model::mlp_forward(yp + r0 * H, 0.f, c->gu.data() + r0 * 2 * I, c->act.data() + r0 * I, xp + r0 * H,
                       expert_weights(s, e), n, H, I, /*serial=*/true);
  }
}

void experts_backward(float* dxp, const float* dyp, const float* xp, const ExpertsCache& c, const ExpertStack& s,
                      const DispatchPlan& plan) {
  const int64_t H = s.hidden, I = s.inter;
  int64_t max_rows = 0;
  for (int64_t e = 0; e < s.num; ++e) max_rows = std::max(max_rows, plan.counts[e]);
#pragma omp parallel
  {
    std::vector<float> scratch(max_rows * 3 * I);
#pragma omp for schedule(dynamic)
    for (int64_t e = 0; e < s.num; ++e) {
      const int64_t r0 = plan.offsets[e], n = plan.counts[e];
      if (n == 0) continue;
      float* g = s.g + e * s.stride();
      model::mlp_backward(dxp + r0 * H, 0.f, {g, g + 2 * I * H}, dyp + r0 * H, xp + r0 * H,
                          c.gu.data() + r0 * 2 * I, c.act.data() + r0 * I, expert_weights(s, e), n, H, I,
                          scratch.data(), /*serial=*/true);
    }
  }
}

void experts_forward_oracle(float* out, const float* x, const int32_t* idx, const float* weights, int64_t T,
                            int64_t k, const ExpertStack& s) {
  const int64_t H = s.hidden, I = s.inter;
  std::vector<double> h(I);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * H;
    float* o = out + t * H;
    std::fill(o, o + H, 0.f);
    for (int64_t j = 0; j < k; ++j) {
      model::MlpWeights w = expert_weights(s, idx[t * k + j]);
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
