// CUDA SwiGLU forward/backward over the packed (rows, 2w) gate/up layout; math from
// swiglu_math.h (the CPU kernel's formulas). Grid-stride loops, one element per thread.
#include "kernels/cuda_types.cuh"
#include "kernels/kernels_cuda.h"
#include "kernels/swiglu_math.h"

namespace moekit::kernels {

namespace {

template <typename T>
__global__ void swiglu_forward_kernel(T* h, const T* gu, int64_t rows, int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / width, c = i % width;
    const T* g = gu + t * 2 * width;
    h[i] = st<T>(swiglu(ld(g[c]), ld(g[width + c])));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgu, const T* dh, const T* gu, int64_t rows, int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / width, c = i % width;
    const T* g = gu + t * 2 * width;
    T* d = dgu + t * 2 * width;
    float dg, du;
    swiglu_grad(ld(g[c]), ld(g[width + c]), ld(dh[i]), &dg, &du);
    d[c] = st<T>(dg);
    d[width + c] = st<T>(du);
  }
}

}  // namespace

template <typename T>
void swiglu_forward_cuda(const Context& ctx, T* h, const T* gu, int64_t rows, int64_t width) {
  if (rows * width == 0) return;
  swiglu_forward_kernel<T><<<cuda::grid_for(rows * width), 256, 0, ctx.stream()>>>(h, gu, rows, width);
  MOEKIT_CUDA_LAUNCHED("swiglu_forward", ctx.stream());
}

template <typename T>
void swiglu_backward_cuda(const Context& ctx, T* dgu, const T* dh, const T* gu, int64_t rows, int64_t width) {
  if (rows * width == 0) return;
  swiglu_backward_kernel<T><<<cuda::grid_for(rows * width), 256, 0, ctx.stream()>>>(dgu, dh, gu, rows, width);
  MOEKIT_CUDA_LAUNCHED("swiglu_backward", ctx.stream());
}

#define INSTANTIATE(T)                                                                     \
  template void swiglu_forward_cuda<T>(const Context&, T*, const T*, int64_t, int64_t); \
  template void swiglu_backward_cuda<T>(const Context&, T*, const T*, const T*, int64_t, int64_t)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::kernels
