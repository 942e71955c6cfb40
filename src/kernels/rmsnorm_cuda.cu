// CUDA RMSNorm: one block per row for the forward and the input gradient, statistics in f32,
// per-row math from rmsnorm_math.h (the formulas the CPU kernel runs). The weight gradient is a
// sum over rows: each block of the backward covers kRowsPerBlock rows and writes its partial
// (D) column sums; a second kernel adds the partials in block order (deterministic).
#include "kernels/cuda_types.cuh"
#include "kernels/kernels_cuda.h"
#include "kernels/rmsnorm_math.h"

namespace moekit::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 32;

template <typename T>
__global__ void rmsnorm_forward_kernel(T* y, float* rstd, const T* x, const float* w, int dim, float eps) {
  __shared__ float red[32];
  const T* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  T* yr = y + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ld(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float r = rmsnorm_rstd(ss, dim, eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = st<T>(w[i] * (ld(xr[i]) * r));
}

// Block b handles rows [b*R, min((b+1)*R, rows)); partial (gridDim.x, dim) receives its dw sums.
template <typename T>
__global__ void rmsnorm_backward_kernel(T* dx, float* partial, const T* dy, const T* x, const float* w,
                                        const float* rstd, int64_t rows, int dim, bool accumulate) {
  __shared__ float red[32];
  extern __shared__ float dw_part[];  // (dim)
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dw_part[i] = 0.f;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
  const int64_t r1 = r0 + kRowsPerBlock < rows ? r0 + kRowsPerBlock : rows;
  for (int64_t t = r0; t < r1; ++t) {
    const T* xr = x + t * dim;
    const T* dyr = dy + t * dim;
    T* dxr = dx + t * dim;
    const float r = rstd[t];
    float acc = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) acc += w[i] * ld(dyr[i]) * ld(xr[i]);
    const float mean = block_sum(acc, red) / static_cast<float>(dim);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      const float xv = ld(xr[i]), dyv = ld(dyr[i]);
      const float g = rmsnorm_dx(xv, w[i], dyv, r, mean);
      dxr[i] = st<T>(accumulate ? ld(dxr[i]) + g : g);
      dw_part[i] += dyv * xv * r;  // each thread owns its columns: no race
    }
  }
  for (int i = threadIdx.x; i < dim; i += blockDim.x) partial[static_cast<size_t>(blockIdx.x) * dim + i] = dw_part[i];
}

}  // namespace

template <typename T>
void rmsnorm_forward_cuda(const Context& ctx, T* y, float* rstd, const T* x, const float* w, int64_t rows, int64_t dim,
                          float eps) {
  if (rows == 0) return;
  rmsnorm_forward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(y, rstd, x, w,
                                                                                       static_cast<int>(dim), eps);
  MOEKIT_CUDA_LAUNCHED("rmsnorm_forward", ctx.stream());
}

template <typename T>
void rmsnorm_backward_cuda(const Context& ctx, T* dx, float* dw, const T* dy, const T* x, const float* w,
                           const float* rstd, int64_t rows, int64_t dim, bool accumulate) {
  if (rows == 0) return;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  auto* partial = static_cast<float*>(ctx.scratch(static_cast<size_t>(blocks * dim) * sizeof(float)));
  const size_t shmem = static_cast<size_t>(dim) * sizeof(float);
  MOEKIT_CHECK(shmem <= 48 * 1024, "rmsnorm_backward_cuda: hidden size ", dim, " exceeds the 12288 supported");
  rmsnorm_backward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, shmem, ctx.stream()>>>(
      dx, partial, dy, x, w, rstd, rows, static_cast<int>(dim), accumulate);
  MOEKIT_CUDA_LAUNCHED("rmsnorm_backward", ctx.stream());
  column_sum_kernel<><<<static_cast<unsigned>((dim + kThreads - 1) / kThreads), kThreads, 0, ctx.stream()>>>(
      dw, partial, blocks, dim);
  MOEKIT_CUDA_LAUNCHED("rmsnorm_backward.dw", ctx.stream());
}

#define INSTANTIATE(T)                                                                                             \
  template void rmsnorm_forward_cuda<T>(const Context&, T*, float*, const T*, const float*, int64_t, int64_t, float); \
  template void rmsnorm_backward_cuda<T>(const Context&, T*, float*, const T*, const T*, const float*, const float*, \
                                         int64_t, int64_t, bool)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::kernels
