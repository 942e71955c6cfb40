// CPU attention: one (batch, kv-head) group per OpenMP task, per-head products with the
// single-threaded strided GEMMs. Causal softmax in f32, masked entries exactly zero.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/attention.h"
#include "kernels/matmul.h"

namespace moekit::kernels {

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v, const AttnShape& s) {
  const int64_t S = s.seq, d = s.head_dim, ldq = s.heads * d, ldk = s.kv_heads * d;
  const int64_t group = s.heads / s.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t kvh = h / group;
      const float* qb = q + b * S * ldq + h * d;
      const float* kb = k + b * S * ldk + kvh * d;
      const float* vb = v + b * S * ldk + kvh * d;
      float* P = probs + (b * s.heads + h) * S * S;
      matmul_nt_st(P, S, qb, ldq, kb, ldk, S, S, d, 0.f, scale);
      for (int64_t i = 0; i < S; ++i) {
        float* row = P + i * S;
        float mx = row[0];
        for (int64_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
        float sum = 0.f;
        for (int64_t j = 0; j <= i; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
        std::fill(row + i + 1, row + S, 0.f);
      }
      matmul_nn_st(out + b * S * ldq + h * d, ldq, P, S, vb, ldk, S, d, S, 0.f, 1.f);
    }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                        const float* k, const float* v, const AttnShape& s) {
  const int64_t S = s.seq, d = s.head_dim, ldq = s.heads * d, ldk = s.kv_heads * d;
  const int64_t group = s.heads / s.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // Heads sharing a kv head accumulate into the same dk/dv: one task per (batch, kv head).
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh) {
      std::vector<float> dS(static_cast<size_t>(S * S));
      const float* kb = k + b * S * ldk + kvh * d;
      const float* vb = v + b * S * ldk + kvh * d;
      float* dkb = dk + b * S * ldk + kvh * d;
      float* dvb = dv + b * S * ldk + kvh * d;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t h = kvh * group + g;
        const float* P = probs + (b * s.heads + h) * S * S;
        const float* qb = q + b * S * ldq + h * d;
        const float* dob = dout + b * S * ldq + h * d;
        const float beta = g == 0 ? 0.f : 1.f;
        // dV += P^T dO
        matmul_tn_st(dvb, ldk, P, S, dob, ldq, S, d, S, beta, 1.f);
        // dP = dO V^T, then dS = P * (dP - sum_j P dP) (softmax backward), scaled.
        matmul_nt_st(dS.data(), S, dob, ldq, vb, ldk, S, S, d, 0.f, 1.f);
        for (int64_t i = 0; i < S; ++i) {
          const float* pr = P + i * S;
          float* r = dS.data() + i * S;
          float dot = 0.f;
          for (int64_t j = 0; j <= i; ++j) dot += pr[j] * r[j];
          for (int64_t j = 0; j <= i; ++j) r[j] = pr[j] * (r[j] - dot) * scale;
          std::fill(r + i + 1, r + S, 0.f);
        }
        // dQ = dS K ; dK += dS^T Q
        matmul_nn_st(dq + b * S * ldq + h * d, ldq, dS.data(), S, kb, ldk, S, d, S, 0.f, 1.f);
        matmul_tn_st(dkb, ldk, dS.data(), S, qb, ldq, S, d, S, beta, 1.f);
      }
    }
}

}  // namespace moekit::kernels
