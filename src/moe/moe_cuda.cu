// CUDA kernels of the MoE block (see moe_cuda.h).
#include <cub/block/block_scan.cuh>

#include "kernels/cuda_types.cuh"
#include "moe/moe_cuda.h"
#include "moe/router_math.h"

namespace moekit::moe {

using kernels::ld;
using kernels::st;

namespace {

constexpr int kThreads = 256;

// ---- router ----

__global__ void router_forward_kernel(float* scores, float* lse, int32_t* idx, float* weights, const float* logits,
                                      const float* bias, int64_t T, int64_t E, int64_t k, bool norm_topk,
                                      bool sigmoid) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= T) return;
  float* s = scores + t * E;
  lse[t] = router_scores(s, logits + t * E, E, sigmoid);
  router_topk(idx + t * k, weights + t * k, s, bias, E, k, norm_topk);
}

// Block e: sum over tokens of scores[:, e] in f64, in a fixed order (thread i takes tokens
// i, i + blockDim, ...; then the block reduction).
__global__ void score_sum_kernel(double* out, const float* scores, int64_t T, int64_t E) {
  __shared__ double red[32];
  const int64_t e = blockIdx.x;
  double s = 0;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) s += scores[t * E + e];
  s = kernels::block_sum_f64(s, red);
  if (threadIdx.x == 0) out[e] = s;
}

template <typename T>
__global__ void router_backward_kernel(T* dlogits, const float* probs, const float* lse, const int32_t* idx,
                                       const float* weights, const float* dweights, const float* dprob, float z_scale,
                                       int64_t tokens, int64_t E, int64_t k, bool norm_topk, bool sigmoid) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  float dz[kCudaMaxExperts];
  router_backward_token(dz, probs + t * E, idx + t * k, weights + t * k, dweights + t * k, dprob, lse[t], z_scale, E,
                        k, norm_topk, sigmoid);
  for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] = st<T>(dz[e]);
}

// ---- dispatch plan: histogram, exclusive scan, stable placement ----

__global__ void expert_histogram_kernel(int32_t* counts, const int32_t* idx, int64_t pairs) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p < pairs) atomicAdd(counts + idx[p], 1);
}

// Offsets of the experts' blocks over their kept rows (min(count, capacity); capacity < 0: all).
__global__ void exclusive_scan_kernel(int32_t* offsets, const int32_t* counts, int64_t E, int64_t capacity) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int32_t run = 0;
  for (int64_t e = 0; e < E; ++e) {
    offsets[e] = run;
    run += capacity >= 0 && counts[e] > capacity ? static_cast<int32_t>(capacity) : counts[e];
  }
  offsets[E] = run;
}

// Block e walks all pairs in order, in chunks of kThreads, and gives each pair routed to e the
// next row of e's block: rank among e's pairs = running count + prefix within the chunk. Pairs
// ranked at or beyond the capacity are dropped (row -1).
__global__ void expert_place_kernel(int32_t* row_of, int32_t* token_of, const int32_t* offsets, const int32_t* idx,
                                    int64_t pairs, int64_t k, int64_t capacity) {
  using Scan = cub::BlockScan<int32_t, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  const int32_t e = static_cast<int32_t>(blockIdx.x);
  int32_t running = 0;
  for (int64_t base = 0; base < pairs; base += kThreads) {
    const int64_t p = base + threadIdx.x;
    const int32_t mine = p < pairs && idx[p] == e ? 1 : 0;
    int32_t prefix, total;
    Scan(temp).ExclusiveSum(mine, prefix, total);
    if (mine) {
      const int32_t rank = running + prefix;
      if (capacity >= 0 && rank >= capacity) {
        row_of[p] = -1;
      } else {
        const int32_t row = offsets[e] + rank;
        row_of[p] = row;
        token_of[row] = static_cast<int32_t>(p / k);
      }
    }
    running += total;
    __syncthreads();  // temp is reused by the next chunk's scan
  }
}

// ---- permute / un-permute ----

template <typename T>
__global__ void dispatch_rows_kernel(T* xp, const T* x, const int32_t* token_of, int64_t rows, int64_t H) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    xp[i] = x[static_cast<int64_t>(token_of[i / H]) * H + i % H];
}

template <typename T>
__global__ void scatter_rows_kernel(T* out, const T* in, const int32_t* dst, int64_t rows, int64_t H) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[static_cast<int64_t>(dst[i / H]) * H + i % H] = in[i];
}

template <typename T>
__global__ void combine_rows_kernel(T* out, float beta, const T* yp, const float* w, const int32_t* row_of,
                                    int64_t tokens, int64_t k, int64_t H) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < tokens * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / H, c = i % H;
    float s = beta != 0.f ? beta * ld(out[i]) : 0.f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = row_of[t * k + j];
      if (row >= 0) s += w[t * k + j] * ld(yp[static_cast<int64_t>(row) * H + c]);
    }
    out[i] = st<T>(s);
  }
}

// One block per (token, slot) pair.
template <typename T>
__global__ void combine_rows_backward_kernel(T* dyp, float* dweights, const T* dout, const T* yp, const float* w,
                                             const int32_t* row_of, int64_t k, int64_t H) {
  __shared__ float red[32];
  const int64_t pair = blockIdx.x, t = pair / k;
  const int64_t row = row_of[pair];
  if (row < 0) {  // dropped by the capacity: no row, no weight gradient
    if (threadIdx.x == 0) dweights[pair] = 0.f;
    return;
  }
  const float wt = w[pair];
  float dot = 0.f;
  for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
    const float d = ld(dout[t * H + c]);
    dot += d * ld(yp[row * H + c]);
    dyp[row * H + c] = st<T>(wt * d);
  }
  dot = kernels::block_sum(dot, red);
  if (threadIdx.x == 0) dweights[pair] = dot;
}

template <typename T>
__global__ void dispatch_rows_backward_kernel(T* dx, float beta, const T* dxp, const int32_t* row_of, int64_t tokens,
                                              int64_t k, int64_t H) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < tokens * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / H, c = i % H;
    float s = beta != 0.f ? beta * ld(dx[i]) : 0.f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t row = row_of[t * k + j];
      if (row >= 0) s += ld(dxp[static_cast<int64_t>(row) * H + c]);
    }
    dx[i] = st<T>(s);
  }
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void router_forward_cuda(const cuda::Context& ctx, float* scores, float* lse, int32_t* idx, float* weights,
                         const float* logits, const float* bias, int64_t tokens, int64_t experts, int64_t topk,
                         bool norm_topk, bool sigmoid) {
  MOEKIT_CHECK(experts <= kCudaMaxExperts, "CUDA router: ", experts, " experts exceed the supported ",
               kCudaMaxExperts);
  if (tokens == 0) return;
  router_forward_kernel<<<blocks(tokens), kThreads, 0, ctx.stream()>>>(scores, lse, idx, weights, logits, bias, tokens,
                                                                       experts, topk, norm_topk, sigmoid);
  MOEKIT_CUDA_LAUNCHED("router_forward", ctx.stream());
}

void score_sum_cuda(const cuda::Context& ctx, double* out, const float* scores, int64_t tokens, int64_t experts) {
  if (experts == 0) return;
  score_sum_kernel<<<static_cast<unsigned>(experts), kThreads, 0, ctx.stream()>>>(out, scores, tokens, experts);
  MOEKIT_CUDA_LAUNCHED("score_sum", ctx.stream());
}

template <typename T>
void router_backward_cuda(const cuda::Context& ctx, T* dlogits, const float* probs, const float* lse,
                          const int32_t* idx, const float* weights, const float* dweights, const float* dprob,
                          float z_scale, int64_t tokens, int64_t experts, int64_t topk, bool norm_topk,
                          bool sigmoid) {
  MOEKIT_CHECK(experts <= kCudaMaxExperts, "CUDA router: ", experts, " experts exceed the supported ",
               kCudaMaxExperts);
  if (tokens == 0) return;
  router_backward_kernel<T><<<blocks(tokens), kThreads, 0, ctx.stream()>>>(
      dlogits, probs, lse, idx, weights, dweights, dprob, z_scale, tokens, experts, topk, norm_topk, sigmoid);
  MOEKIT_CUDA_LAUNCHED("router_backward", ctx.stream());
}

void dispatch_plan_cuda(const cuda::Context& ctx, int32_t* counts, int32_t* offsets, int32_t* row_of,
                        int32_t* token_of, const int32_t* idx, int64_t tokens, int64_t topk, int64_t experts,
                        int64_t capacity) {
  const int64_t pairs = tokens * topk;
  MOEKIT_CHECK(pairs < INT32_MAX, "CUDA dispatch: ", pairs, " (token, slot) pairs exceed 32-bit row indices");
  MOEKIT_CUDA_CHECK(cudaMemsetAsync(counts, 0, experts * sizeof(int32_t), ctx.stream()));
  if (pairs > 0) {
    expert_histogram_kernel<<<blocks(pairs), kThreads, 0, ctx.stream()>>>(counts, idx, pairs);
    MOEKIT_CUDA_LAUNCHED("dispatch_plan.histogram", ctx.stream());
  }
  exclusive_scan_kernel<<<1, 32, 0, ctx.stream()>>>(offsets, counts, experts, capacity);
  MOEKIT_CUDA_LAUNCHED("dispatch_plan.scan", ctx.stream());
  if (pairs > 0) {
    expert_place_kernel<<<static_cast<unsigned>(experts), kThreads, 0, ctx.stream()>>>(row_of, token_of, offsets, idx,
                                                                                       pairs, topk, capacity);
    MOEKIT_CUDA_LAUNCHED("dispatch_plan.place", ctx.stream());
  }
}

template <typename T>
void dispatch_rows_cuda(const cuda::Context& ctx, T* xp, const T* x, const int32_t* token_of, int64_t rows,
                        int64_t hidden) {
  if (rows * hidden == 0) return;
  dispatch_rows_kernel<T><<<cuda::grid_for(rows * hidden), kThreads, 0, ctx.stream()>>>(xp, x, token_of, rows, hidden);
  MOEKIT_CUDA_LAUNCHED("dispatch_rows", ctx.stream());
}

template <typename T>
void scatter_rows_cuda(const cuda::Context& ctx, T* out, const T* in, const int32_t* dst, int64_t rows,
                       int64_t hidden) {
  if (rows * hidden == 0) return;
  scatter_rows_kernel<T><<<cuda::grid_for(rows * hidden), kThreads, 0, ctx.stream()>>>(out, in, dst, rows, hidden);
  MOEKIT_CUDA_LAUNCHED("scatter_rows", ctx.stream());
}

template <typename T>
void combine_rows_cuda(const cuda::Context& ctx, T* out, float beta, const T* yp, const float* weights,
                       const int32_t* row_of, int64_t tokens, int64_t topk, int64_t hidden) {
  if (tokens * hidden == 0) return;
  combine_rows_kernel<T><<<cuda::grid_for(tokens * hidden), kThreads, 0, ctx.stream()>>>(out, beta, yp, weights,
                                                                                         row_of, tokens, topk, hidden);
  MOEKIT_CUDA_LAUNCHED("combine_rows", ctx.stream());
}

template <typename T>
void combine_rows_backward_cuda(const cuda::Context& ctx, T* dyp, float* dweights, const T* dout, const T* yp,
                                const float* weights, const int32_t* row_of, int64_t tokens, int64_t topk,
                                int64_t hidden) {
  if (tokens * topk == 0) return;
  combine_rows_backward_kernel<T><<<static_cast<unsigned>(tokens * topk), kThreads, 0, ctx.stream()>>>(
      dyp, dweights, dout, yp, weights, row_of, topk, hidden);
  MOEKIT_CUDA_LAUNCHED("combine_rows_backward", ctx.stream());
}

template <typename T>
void dispatch_rows_backward_cuda(const cuda::Context& ctx, T* dx, float beta, const T* dxp, const int32_t* row_of,
                                 int64_t tokens, int64_t topk, int64_t hidden) {
  if (tokens * hidden == 0) return;
  dispatch_rows_backward_kernel<T><<<cuda::grid_for(tokens * hidden), kThreads, 0, ctx.stream()>>>(
      dx, beta, dxp, row_of, tokens, topk, hidden);
  MOEKIT_CUDA_LAUNCHED("dispatch_rows_backward", ctx.stream());
}

#define INSTANTIATE(T)                                                                                              \
  template void router_backward_cuda<T>(const cuda::Context&, T*, const float*, const float*, const int32_t*,     \
                                        const float*, const float*, const float*, float, int64_t, int64_t, int64_t, \
                                        bool, bool);                                                                \
  template void dispatch_rows_cuda<T>(const cuda::Context&, T*, const T*, const int32_t*, int64_t, int64_t);     \
  template void scatter_rows_cuda<T>(const cuda::Context&, T*, const T*, const int32_t*, int64_t, int64_t);      \
  template void combine_rows_cuda<T>(const cuda::Context&, T*, float, const T*, const float*, const int32_t*,    \
                                     int64_t, int64_t, int64_t);                                                    \
  template void combine_rows_backward_cuda<T>(const cuda::Context&, T*, float*, const T*, const T*, const float*, \
                                              const int32_t*, int64_t, int64_t, int64_t);                           \
  template void dispatch_rows_backward_cuda<T>(const cuda::Context&, T*, float, const T*, const int32_t*, int64_t, \
                                               int64_t, int64_t)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::moe
