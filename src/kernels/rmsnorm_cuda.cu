// CUDA RMSNorm forward: one block per row, the per-row math from rmsnorm_math.h (the same
// formulas the CPU kernel runs).
#include <cuda_runtime.h>

#include "kernels/rmsnorm_math.h"
#include "kernels/kernels_cuda.h"

namespace moekit::kernels {

namespace {
__global__ void rmsnorm_forward_kernel(float* y, float* rstd, const float* x, const float* w, int dim, float eps) {
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  float* yr = y + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    ss = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) part[0] = ss;
  }
  __syncthreads();
  const float r = rmsnorm_rstd(part[0], dim, eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = w[i] * (xr[i] * r);
}
}  // namespace

void rmsnorm_forward_cuda(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                          cudaStream_t stream) {
  if (rows == 0) return;
  rmsnorm_forward_kernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(y, rstd, x, w, static_cast<int>(dim), eps);
}

}  // namespace moekit::kernels
