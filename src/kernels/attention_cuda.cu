// Plain CUDA causal GQA attention (see attention_cuda.h). Lane l of a warp holds elements
// l, l + 32, ... of a head vector (head_dim up to 256); a dot product is a lane-local sum plus a
// warp reduction, so every lane sees every score. Scores and softmax statistics are f32.
#include <cmath>

#include "kernels/attention_cuda.h"
#include "kernels/cuda_types.cuh"

namespace moekit::kernels {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kPerLane = kAttnMaxHeadDim / 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ void load_row(float (&r)[kPerLane], const T* p, int d) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int i = lane + 32 * c;
    r[c] = i < d ? ld(p[i]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ float dot_row(const float (&r)[kPerLane], const T* p, int d) {
  const int lane = threadIdx.x & 31;
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int i = lane + 32 * c;
    if (i < d) s += r[c] * ld(p[i]);
  }
  return warp_sum(s);
}

template <typename T>
__device__ __forceinline__ void axpy_row(float (&acc)[kPerLane], float a, const T* p, int d) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int i = lane + 32 * c;
    if (i < d) acc[c] += a * ld(p[i]);
  }
}

template <typename T>
__device__ __forceinline__ void store_row(T* p, const float (&r)[kPerLane], float scale, int d) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int i = lane + 32 * c;
    if (i < d) p[i] = st<T>(r[c] * scale);
  }
}

// Row index of warp w: (b, h, i) flattened as ((b * heads) + h) * S + i.
struct RowId {
  int64_t b, h, i;
};
__device__ __forceinline__ RowId row_id(int64_t w, int64_t heads, int64_t S) {
  return {w / (heads * S), (w / S) % heads, w % S};
}

template <typename T>
__global__ void attn_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, AttnShape s, float scale) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t S = s.seq, H = s.heads, d = s.head_dim, ldq = H * d, ldk = s.kv_heads * d;
  if (w >= s.batch * H * S) return;
  const RowId r = row_id(w, H, S);
  const int64_t kvh = r.h / (H / s.kv_heads);
  float qr[kPerLane], acc[kPerLane];
  load_row(qr, q + (r.b * S + r.i) * ldq + r.h * d, static_cast<int>(d));
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) acc[c] = 0.f;
  float m = -INFINITY, l = 0.f;
  const T* kb = k + r.b * S * ldk + kvh * d;
  const T* vb = v + r.b * S * ldk + kvh * d;
  for (int64_t j = 0; j <= r.i; ++j) {
    const float sc = dot_row(qr, kb + j * ldk, static_cast<int>(d)) * scale;
    const float m_new = fmaxf(m, sc);
    const float corr = expf(m - m_new), p = expf(sc - m_new);
    l = l * corr + p;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[c] *= corr;
    axpy_row(acc, p, vb + j * ldk, static_cast<int>(d));
    m = m_new;
  }
  store_row(out + (r.b * S + r.i) * ldq + r.h * d, acc, 1.f / l, static_cast<int>(d));
  if ((threadIdx.x & 31) == 0) lse[w] = m + logf(l);
}

// delta (B, H, S) = rowwise dot(dout, out): the softmax backward's sum_j p_ij dp_ij.
template <typename T>
__global__ void attn_delta_kernel(float* delta, const T* dout, const T* out, AttnShape s) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t S = s.seq, H = s.heads, d = s.head_dim, ldq = H * d;
  if (w >= s.batch * H * S) return;
  const RowId r = row_id(w, H, S);
  float o[kPerLane];
  load_row(o, out + (r.b * S + r.i) * ldq + r.h * d, static_cast<int>(d));
  const float dd = dot_row(o, dout + (r.b * S + r.i) * ldq + r.h * d, static_cast<int>(d));
  if ((threadIdx.x & 31) == 0) delta[w] = dd;
}

// dq_i = scale * sum_{j <= i} p_ij (dp_ij - delta_i) k_j, one warp per query row.
template <typename T>
__global__ void attn_dq_kernel(T* dq, const T* dout, const float* lse, const float* delta, const T* q, const T* k,
                               const T* v, AttnShape s, float scale) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t S = s.seq, H = s.heads, d = s.head_dim, ldq = H * d, ldk = s.kv_heads * d;
  if (w >= s.batch * H * S) return;
  const RowId r = row_id(w, H, S);
  const int64_t kvh = r.h / (H / s.kv_heads);
  const int di = static_cast<int>(d);
  float qr[kPerLane], dor[kPerLane], acc[kPerLane];
  load_row(qr, q + (r.b * S + r.i) * ldq + r.h * d, di);
  load_row(dor, dout + (r.b * S + r.i) * ldq + r.h * d, di);
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) acc[c] = 0.f;
  const float lse_i = lse[w], delta_i = delta[w];
  const T* kb = k + r.b * S * ldk + kvh * d;
  const T* vb = v + r.b * S * ldk + kvh * d;
  for (int64_t j = 0; j <= r.i; ++j) {
    const float p = expf(dot_row(qr, kb + j * ldk, di) * scale - lse_i);
    const float dp = dot_row(dor, vb + j * ldk, di);
    axpy_row(acc, p * (dp - delta_i), kb + j * ldk, di);
  }
  store_row(dq + (r.b * S + r.i) * ldq + r.h * d, acc, scale, di);
}

// For key row j of kv head g: dv_j = sum_{h in g} sum_{i >= j} p_ij do_i,
// dk_j = scale * sum_{h in g} sum_{i >= j} p_ij (dp_ij - delta_i) q_i. One warp per key row.
template <typename T>
__global__ void attn_dkdv_kernel(T* dk, T* dv, const T* dout, const float* lse, const float* delta, const T* q,
                                 const T* k, const T* v, AttnShape s, float scale) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t S = s.seq, Hkv = s.kv_heads, d = s.head_dim, ldq = s.heads * d, ldk = Hkv * d;
  if (w >= s.batch * Hkv * S) return;
  const RowId r = row_id(w, Hkv, S);  // r.h is the kv head, r.i the key position j
  const int64_t group = s.heads / Hkv;
  const int di = static_cast<int>(d);
  float kr[kPerLane], vr[kPerLane], dk_acc[kPerLane], dv_acc[kPerLane];
  load_row(kr, k + (r.b * S + r.i) * ldk + r.h * d, di);
  load_row(vr, v + (r.b * S + r.i) * ldk + r.h * d, di);
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) dk_acc[c] = dv_acc[c] = 0.f;
  for (int64_t g = 0; g < group; ++g) {
    const int64_t h = r.h * group + g;
    const float* lse_h = lse + (r.b * s.heads + h) * S;
    const float* delta_h = delta + (r.b * s.heads + h) * S;
    for (int64_t i = r.i; i < S; ++i) {
      const T* qi = q + (r.b * S + i) * ldq + h * d;
      const T* doi = dout + (r.b * S + i) * ldq + h * d;
      const float p = expf(dot_row(kr, qi, di) * scale - lse_h[i]);
      const float dp = dot_row(vr, doi, di);
      axpy_row(dv_acc, p, doi, di);
      axpy_row(dk_acc, p * (dp - delta_h[i]), qi, di);
    }
  }
  store_row(dv + (r.b * S + r.i) * ldk + r.h * d, dv_acc, 1.f, di);
  store_row(dk + (r.b * S + r.i) * ldk + r.h * d, dk_acc, scale, di);
}

unsigned blocks_for_rows(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

void check_shape(const AttnShape& s) {
  MOEKIT_CHECK(s.head_dim > 0 && s.head_dim <= kAttnMaxHeadDim, "CUDA attention: head_dim ", s.head_dim,
               " is outside (0, ", kAttnMaxHeadDim, "]");
  MOEKIT_CHECK(s.kv_heads > 0 && s.heads % s.kv_heads == 0, "CUDA attention: ", s.heads,
               " heads are not a multiple of ", s.kv_heads, " kv heads");
}

}  // namespace

template <typename T>
void attention_forward_cuda(const cuda::Context& ctx, T* out, float* lse, const T* q, const T* k, const T* v,
                            const AttnShape& s) {
  check_shape(s);
  const int64_t rows = s.batch * s.heads * s.seq;
  if (rows == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  attn_forward_kernel<T><<<blocks_for_rows(rows), 32 * kWarpsPerBlock, 0, ctx.stream()>>>(out, lse, q, k, v, s, scale);
  MOEKIT_CUDA_LAUNCHED("attention_forward", ctx.stream());
}

template <typename T>
void attention_backward_cuda(const cuda::Context& ctx, T* dq, T* dk, T* dv, float* delta, const T* dout, const T* out,
                             const float* lse, const T* q, const T* k, const T* v, const AttnShape& s) {
  check_shape(s);
  const int64_t rows = s.batch * s.heads * s.seq, kv_rows = s.batch * s.kv_heads * s.seq;
  if (rows == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const unsigned threads = 32 * kWarpsPerBlock;
  attn_delta_kernel<T><<<blocks_for_rows(rows), threads, 0, ctx.stream()>>>(delta, dout, out, s);
  MOEKIT_CUDA_LAUNCHED("attention_backward.delta", ctx.stream());
  attn_dq_kernel<T><<<blocks_for_rows(rows), threads, 0, ctx.stream()>>>(dq, dout, lse, delta, q, k, v, s, scale);
  MOEKIT_CUDA_LAUNCHED("attention_backward.dq", ctx.stream());
  attn_dkdv_kernel<T><<<blocks_for_rows(kv_rows), threads, 0, ctx.stream()>>>(dk, dv, dout, lse, delta, q, k, v, s,
                                                                               scale);
  MOEKIT_CUDA_LAUNCHED("attention_backward.dkdv", ctx.stream());
}

#define INSTANTIATE(T)                                                                                         \
  template void attention_forward_cuda<T>(const cuda::Context&, T*, float*, const T*, const T*, const T*,    \
                                          const AttnShape&);                                                   \
  template void attention_backward_cuda<T>(const cuda::Context&, T*, T*, T*, float*, const T*, const T*,     \
                                           const float*, const T*, const T*, const T*, const AttnShape&)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::kernels
