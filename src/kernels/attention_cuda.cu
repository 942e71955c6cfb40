// CUDA causal GQA attention (see attention_cuda.h): the cuBLAS-GEMM path and the plain kernels.
// Plain kernels: lane l of a warp holds elements
// l, l + 32, ... of a head vector (head_dim up to 256); a dot product is a lane-local sum plus a
// warp reduction, so every lane sees every score. Scores and softmax statistics are f32.
#include <cmath>
#include <type_traits>

#include "kernels/attention_cuda.h"
#include "kernels/cuda_types.cuh"
#include "kernels/gemm_cuda.h"
#include "kernels/kernels_cuda.h"

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


// ---- GEMM path: row kernels over one sequence's (H, S, S) scores ----

// Row r = h * S + i of the scores (already scaled): causal softmax into probs (T), lse.
template <typename T>
__global__ void attn_softmax_rows_kernel(T* probs, float* lse, const float* scores, int64_t S) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x, i = r % S;
  const float* z = scores + r * S;
  T* p = probs + r * S;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, z[j]);
  mx = block_max(mx, red);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(z[j] - mx);
  sum = block_sum(sum, red);
  const float inv = 1.f / sum;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) p[j] = st<T>(j <= i ? expf(z[j] - mx) * inv : 0.f);
  if (threadIdx.x == 0) lse[r] = mx + logf(sum);
}

// The probabilities again from the saved log-sum-exp (backward).
template <typename T>
__global__ void attn_probs_from_lse_kernel(T* probs, const float* lse, const float* scores, int64_t S) {
  const int64_t r = blockIdx.x, i = r % S;
  const float l = lse[r];
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x)
    probs[r * S + j] = st<T>(j <= i ? expf(scores[r * S + j] - l) : 0.f);
}

// dS = P (dP - delta) * scale, in place over the probabilities (each element read, then written,
// by one thread).
template <typename T>
__global__ void attn_dscores_kernel(T* ds, const float* dp, const float* delta, int64_t S, float scale) {
  const int64_t r = blockIdx.x, i = r % S;
  const float dl = delta[r];
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) {
    const float p = ld(ds[r * S + j]);
    ds[r * S + j] = st<T>(j <= i ? p * (dp[r * S + j] - dl) * scale : 0.f);
  }
}

// The per-head products of one sequence b. Head h = kvh * group + g: for a fixed g the heads
// of consecutive kv heads sit at constant strides, so each product is one strided-batched GEMM
// over the kv heads, and the group's heads come one after another (which is also what lets
// dK and dV accumulate over them with beta = 1).
struct SeqGemms {
  const cuda::Context& ctx;
  const AttnShape& s;
  DType t;
  int64_t b;
  int64_t group() const { return s.heads / s.kv_heads; }
  int64_t ldk() const { return s.kv_heads * s.head_dim; }
  size_t es() const { return dtype_size(t); }
  // C[S, S] (f32, head-major) = alpha * X Y^T for X = rows of q-like (ld ldx) and Y of k-like.
  void scores(float* c, const void* x, int64_t ldx, int64_t x_is_q, const void* y, float alpha, int64_t g) {
    const int64_t S = s.seq, d = s.head_dim, G = group();
    GemmArgs a{GemmOp::kNT, S, S, d, t, DType::kF32, alpha, 0.f, ldx, ldk(), S};
    const char* xp = static_cast<const char*>(x) + (b * S * ldx + (x_is_q ? g * d : 0)) * es();
    const char* yp = static_cast<const char*>(y) + b * S * ldk() * es();
    strided_batched_gemm_cuda(ctx, a, s.kv_heads, c + g * S * S, G * S * S, xp, x_is_q ? G * d : d, yp, d);
  }
};

// One sequence's (H, S, S) scores (f32) and probabilities (T), grown as needed.
template <typename T>
void reserve_workspace(AttnWorkspace* ws, const AttnShape& s, float** scores, T** probs) {
  const size_t n = static_cast<size_t>(s.heads * s.seq * s.seq);
  ws->scores.reserve(n * sizeof(float));
  ws->probs.reserve(n * sizeof(T));
  *scores = static_cast<float*>(ws->scores.data());
  *probs = static_cast<T*>(ws->probs.data());
}

template <typename T>
void gemm_forward(const cuda::Context& ctx, AttnWorkspace* ws, T* out, float* lse, const T* q, const T* k, const T* v,
                  const AttnShape& s) {
  const int64_t S = s.seq, d = s.head_dim, H = s.heads, G = s.heads / s.kv_heads;
  const int64_t ldq = H * d, ldk = s.kv_heads * d;
  float* sc = nullptr;
  T* pr = nullptr;
  reserve_workspace(ws, s, &sc, &pr);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t b = 0; b < s.batch; ++b) {
    SeqGemms sg{ctx, s, act_dtype<T>(), b};
    for (int64_t g = 0; g < G; ++g) sg.scores(sc, q, ldq, 1, k, scale, g);
    attn_softmax_rows_kernel<T><<<static_cast<unsigned>(H * S), 256, 0, ctx.stream()>>>(pr, lse + b * H * S, sc, S);
    MOEKIT_CUDA_LAUNCHED("attention_forward.softmax", ctx.stream());
    for (int64_t g = 0; g < G; ++g) {  // out_h = P_h V_kvh
      GemmArgs a{GemmOp::kNN, S, d, S, act_dtype<T>(), act_dtype<T>(), 1.f, 0.f, S, ldk, ldq};
      strided_batched_gemm_cuda(ctx, a, s.kv_heads, out + b * S * ldq + g * d, G * d, pr + g * S * S, G * S * S,
                                v + b * S * ldk, d);
    }
  }
}

template <typename T>
void gemm_backward(const cuda::Context& ctx, AttnWorkspace* ws, T* dq, T* dk, T* dv, const float* delta, const T* dout,
                   const float* lse, const T* q, const T* k, const T* v, const AttnShape& s) {
  const int64_t S = s.seq, d = s.head_dim, H = s.heads, G = s.heads / s.kv_heads;
  const int64_t ldq = H * d, ldk = s.kv_heads * d;
  float* sc = nullptr;
  T* pr = nullptr;
  reserve_workspace(ws, s, &sc, &pr);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const DType t = act_dtype<T>();
  // dK and dV sum over the G query heads of a kv head (beta = 1 after the first): in bf16 each
  // partial sum would be rounded, so a bf16 model accumulates them in f32 and rounds once.
  constexpr bool kWiden = !std::is_same_v<T, float>;
  float* dk32 = nullptr;
  float* dv32 = nullptr;
  if (kWiden) {
    ws->dkv32.reserve(static_cast<size_t>(2 * S * ldk) * sizeof(float));
    dk32 = static_cast<float*>(ws->dkv32.data());
    dv32 = dk32 + S * ldk;
  }
  const DType acc = kWiden ? DType::kF32 : t;
  for (int64_t b = 0; b < s.batch; ++b) {
    SeqGemms sg{ctx, s, t, b};
    void* dkb = kWiden ? static_cast<void*>(dk32) : static_cast<void*>(dk + b * S * ldk);
    void* dvb = kWiden ? static_cast<void*>(dv32) : static_cast<void*>(dv + b * S * ldk);
    for (int64_t g = 0; g < G; ++g) sg.scores(sc, q, ldq, 1, k, scale, g);
    attn_probs_from_lse_kernel<T><<<static_cast<unsigned>(H * S), 256, 0, ctx.stream()>>>(pr, lse + b * H * S, sc, S);
    MOEKIT_CUDA_LAUNCHED("attention_backward.probs", ctx.stream());
    const T* dob = dout + b * S * ldq;
    for (int64_t g = 0; g < G; ++g) {
      // dV_kvh (+)= P_h^T dO_h
      GemmArgs a{GemmOp::kTN, S, d, S, t, acc, 1.f, g > 0 ? 1.f : 0.f, S, ldq, ldk};
      strided_batched_gemm_cuda(ctx, a, s.kv_heads, dvb, d, pr + g * S * S, G * S * S, dob + g * d, G * d);
      // dP_h = dO_h V_kvh^T (f32, over the scores)
      sg.scores(sc, dout, ldq, 1, v, 1.f, g);
    }
    attn_dscores_kernel<T><<<static_cast<unsigned>(H * S), 256, 0, ctx.stream()>>>(pr, sc, delta + b * H * S, S,
                                                                                     scale);
    MOEKIT_CUDA_LAUNCHED("attention_backward.dscores", ctx.stream());
    for (int64_t g = 0; g < G; ++g) {
      GemmArgs aq{GemmOp::kNN, S, d, S, t, t, 1.f, 0.f, S, ldk, ldq};  // dQ_h = dS_h K_kvh
      strided_batched_gemm_cuda(ctx, aq, s.kv_heads, dq + b * S * ldq + g * d, G * d, pr + g * S * S, G * S * S,
                                k + b * S * ldk, d);
      GemmArgs ak{GemmOp::kTN, S, d, S, t, acc, 1.f, g > 0 ? 1.f : 0.f, S, ldq, ldk};  // dK_kvh (+)= dS_h^T Q_h
      strided_batched_gemm_cuda(ctx, ak, s.kv_heads, dkb, d, pr + g * S * S, G * S * S, q + b * S * ldq + g * d,
                                G * d);
    }
    if constexpr (kWiden) {
      f32_to_bf16_cuda(ctx, dk + b * S * ldk, dk32, S * ldk);
      f32_to_bf16_cuda(ctx, dv + b * S * ldk, dv32, S * ldk);
    }
  }
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
                            const AttnShape& s, AttnImpl impl, AttnWorkspace* ws) {
  check_shape(s);
  const int64_t rows = s.batch * s.heads * s.seq;
  if (rows == 0) return;
  if (impl == AttnImpl::kGemm) {
    MOEKIT_CHECK(ws, "attention_forward_cuda: the GEMM path needs a workspace");
    gemm_forward(ctx, ws, out, lse, q, k, v, s);
    return;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  attn_forward_kernel<T><<<blocks_for_rows(rows), 32 * kWarpsPerBlock, 0, ctx.stream()>>>(out, lse, q, k, v, s, scale);
  MOEKIT_CUDA_LAUNCHED("attention_forward", ctx.stream());
}

template <typename T>
void attention_backward_cuda(const cuda::Context& ctx, T* dq, T* dk, T* dv, float* delta, const T* dout, const T* out,
                             const float* lse, const T* q, const T* k, const T* v, const AttnShape& s, AttnImpl impl,
                             AttnWorkspace* ws) {
  check_shape(s);
  const int64_t rows = s.batch * s.heads * s.seq, kv_rows = s.batch * s.kv_heads * s.seq;
  if (rows == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const unsigned threads = 32 * kWarpsPerBlock;
  attn_delta_kernel<T><<<blocks_for_rows(rows), threads, 0, ctx.stream()>>>(delta, dout, out, s);
  MOEKIT_CUDA_LAUNCHED("attention_backward.delta", ctx.stream());
  if (impl == AttnImpl::kGemm) {
    MOEKIT_CHECK(ws, "attention_backward_cuda: the GEMM path needs a workspace");
    gemm_backward(ctx, ws, dq, dk, dv, delta, dout, lse, q, k, v, s);
    return;
  }
  attn_dq_kernel<T><<<blocks_for_rows(rows), threads, 0, ctx.stream()>>>(dq, dout, lse, delta, q, k, v, s, scale);
  MOEKIT_CUDA_LAUNCHED("attention_backward.dq", ctx.stream());
  attn_dkdv_kernel<T><<<blocks_for_rows(kv_rows), threads, 0, ctx.stream()>>>(dk, dv, dout, lse, delta, q, k, v, s,
                                                                               scale);
  MOEKIT_CUDA_LAUNCHED("attention_backward.dkdv", ctx.stream());
}

#define INSTANTIATE(T)                                                                                         \
  template void attention_forward_cuda<T>(const cuda::Context&, T*, float*, const T*, const T*, const T*,    \
                                          const AttnShape&, AttnImpl, AttnWorkspace*);                         \
  template void attention_backward_cuda<T>(const cuda::Context&, T*, T*, T*, float*, const T*, const T*,     \
                                           const float*, const T*, const T*, const T*, const AttnShape&,       \
                                           AttnImpl, AttnWorkspace*)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::kernels
