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

__global__ void router_forward_kernel(float* probs, float* lse, int32_t* idx, float* weights, const float* logits,
                                      int64_t T, int64_t E, int64_t k, bool norm_topk) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= T) return;
  float* p = probs + t * E;
  lse[t] = router_softmax(p, logits + t * E, E);
  router_topk(idx + t * k, weights + t * k, p, E, k, norm_topk);
}

template <typename T>
__global__ void router_backward_kernel(T* dlogits, const float* probs, const float* lse, const int32_t* idx,
                                       const float* weights, const float* dweights, const float* dprob, float z_scale,
                                       int64_t tokens, int64_t E, int64_t k, bool norm_topk) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  float dz[kCudaMaxExperts];
  router_backward_token(dz, probs + t * E, idx + t * k, weights + t * k, dweights + t * k, dprob, lse[t], z_scale, E,
                        k, norm_topk);
  for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] = st<T>(dz[e]);
}

// ---- dispatch plan: histogram, exclusive scan, stable placement ----

__global__ void expert_histogram_kernel(int32_t* counts, const int32_t* idx, int64_t pairs) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p < pairs) atomicAdd(counts + idx[p], 1);
}

__global__ void exclusive_scan_kernel(int32_t* offsets, const int32_t* counts, int64_t E) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int32_t run = 0;
  for (int64_t e = 0; e < E; ++e) {
    offsets[e] = run;
    run += counts[e];
  }
  offsets[E] = run;
}

// Block e walks all pairs in order, in chunks of kThreads, and gives each pair routed to e the
// next row of e's block: rank among e's pairs = running count + prefix within the chunk.
__global__ void expert_place_kernel(int32_t* row_of, int32_t* token_of, const int32_t* offsets, const int32_t* idx,
                                    int64_t pairs, int64_t k) {
  using Scan = cub::BlockScan<int32_t, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  const int32_t e = static_cast<int32_t>(blockIdx.x);
  int32_t running = offsets[e];
  for (int64_t base = 0; base < pairs; base += kThreads) {
    const int64_t p = base + threadIdx.x;
    const int32_t mine = p < pairs && idx[p] == e ? 1 : 0;
    int32_t prefix, total;
    Scan(temp).ExclusiveSum(mine, prefix, total);
    if (mine) {
      const int32_t row = running + prefix;
      row_of[p] = row;
      token_of[row] = static_cast<int32_t>(p / k);
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
    for (int64_t j = 0; j < k; ++j) s += w[t * k + j] * ld(yp[static_cast<int64_t>(row_of[t * k + j]) * H + c]);
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
    for (int64_t j = 0; j < k; ++j) s += ld(dxp[static_cast<int64_t>(row_of[t * k + j]) * H + c]);
    dx[i] = st<T>(s);
  }
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void router_forward_cuda(const cuda::Context& ctx, float* probs, float* lse, int32_t* idx, float* weights,
                         const float* logits, int64_t tokens, int64_t experts, int64_t topk, bool norm_topk) {
  MOEKIT_CHECK(experts <= kCudaMaxExperts, "CUDA router: ", experts, " experts exceed the supported ",
               kCudaMaxExperts);
  if (tokens == 0) return;
  router_forward_kernel<<<blocks(tokens), kThreads, 0, ctx.stream()>>>(probs, lse, idx, weights, logits, tokens,
                                                                       experts, topk, norm_topk);
  MOEKIT_CUDA_LAUNCHED("router_forward", ctx.stream());
}

template <typename T>
void router_backward_cuda(const cuda::Context& ctx, T* dlogits, const float* probs, const float* lse,
                          const int32_t* idx, const float* weights, const float* dweights, const float* dprob,
                          float z_scale, int64_t tokens, int64_t experts, int64_t topk, bool norm_topk) {
  MOEKIT_CHECK(experts <= kCudaMaxExperts, "CUDA router: ", experts, " experts exceed the supported ",
               kCudaMaxExperts);
  if (tokens == 0) return;
  router_backward_kernel<T><<<blocks(tokens), kThreads, 0, ctx.stream()>>>(
      dlogits, probs, lse, idx, weights, dweights, dprob, z_scale, tokens, experts, topk, norm_topk);
  MOEKIT_CUDA_LAUNCHED("router_backward", ctx.stream());
}

void dispatch_plan_cuda(const cuda::Context& ctx, int32_t* counts, int32_t* offsets, int32_t* row_of,
                        int32_t* token_of, const int32_t* idx, int64_t tokens, int64_t topk, int64_t experts) {
  const int64_t pairs = tokens * topk;
  MOEKIT_CHECK(pairs < INT32_MAX, "CUDA dispatch: ", pairs, " (token, slot) pairs exceed 32-bit row indices");
  MOEKIT_CUDA_CHECK(cudaMemsetAsync(counts, 0, experts * sizeof(int32_t), ctx.stream()));
  if (pairs > 0) {
    expert_histogram_kernel<<<blocks(pairs), kThreads, 0, ctx.stream()>>>(counts, idx, pairs);
    MOEKIT_CUDA_LAUNCHED("dispatch_plan.histogram", ctx.stream());
  }
  exclusive_scan_kernel<<<1, 32, 0, ctx.stream()>>>(offsets, counts, experts);
  MOEKIT_CUDA_LAUNCHED("dispatch_plan.scan", ctx.stream());
  if (pairs > 0) {
    expert_place_kernel<<<static_cast<unsigned>(experts), kThreads, 0, ctx.stream()>>>(row_of, token_of, offsets, idx,
                                                                                       pairs, topk);
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
                                        bool);                                                                      \
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
