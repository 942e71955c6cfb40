// CUDA SwiGLU forward/backward over the packed (rows, 2w) gate/up layout; math from
// swiglu_math.h.
#include <cuda_runtime.h>

#include "kernels/kernels_cuda.h"
#include "kernels/swiglu_math.h"

namespace moekit::kernels {

namespace {
__global__ void swiglu_forward_kernel(float* h, const float* gu, int64_t rows, int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / width, c = i % width;
    const float* g = gu + t * 2 * width;
    h[i] = swiglu(g[c], g[width + c]);
  }
}

__global__ void swiglu_backward_kernel(float* dgu, const float* dh, const float* gu, int64_t rows, int64_t width) {
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / width, c = i % width;
    const float* g = gu + t * 2 * width;
    float* d = dgu + t * 2 * width;
    swiglu_grad(g[c], g[width + c], dh[i], &d[c], &d[width + c]);
  }
}

unsigned grid_for(int64_t n) {
  int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}
}  // namespace

void swiglu_forward_cuda(float* h, const float* gu, int64_t rows, int64_t width, cudaStream_t stream) {
  swiglu_forward_kernel<<<grid_for(rows * width), 256, 0, stream>>>(h, gu, rows, width);
}

void swiglu_backward_cuda(float* dgu, const float* dh, const float* gu, int64_t rows, int64_t width,
                          cudaStream_t stream) {
  swiglu_backward_kernel<<<grid_for(rows * width), 256, 0, stream>>>(dgu, dh, gu, rows, width);
}

}  // namespace moekit::kernels
