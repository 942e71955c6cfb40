#include <cmath>

#include "kernels/rope.h"
#include "kernels/rope_math.h"

namespace moekit::kernels {

void rope_tables(std::vector<float>* cos, std::vector<float>* sin, int64_t seq, int64_t head_dim, double theta) {
  const int64_t half = head_dim / 2;
  cos->assign(static_cast<size_t>(seq * head_dim), 0.f);
  sin->assign(static_cast<size_t>(seq * head_dim), 0.f);
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(theta), expo);
  }
  for (int64_t p = 0; p < seq; ++p)
    for (int64_t i = 0; i < half; ++i) {
      float ang = static_cast<float>(p) * inv_freq[i];
      float c = std::cos(ang), s = std::sin(ang);
      (*cos)[p * head_dim + i] = (*cos)[p * head_dim + i + half] = c;
      (*sin)[p * head_dim + i] = (*sin)[p * head_dim + i + half] = s;
    }
}

void rope_apply(float* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
                int64_t head_dim, bool inverse) {
  const int64_t half = head_dim / 2;
  const float sign = inverse ? -1.f : 1.f;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t p = 0; p < seq; ++p) {
      const float* c = cos + p * head_dim;
      const float* s = sin + p * head_dim;
      float* row = x + (b * seq + p) * heads * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = row + h * head_dim;
        for (int64_t i = 0; i < half; ++i) rope_pair(v + i, v + i + half, c[i], s[i], c[i + half], s[i + half], sign);
      }
    }
}

}  // namespace moekit::kernels
