// CUDA kernels (device pointers, asynchronous on `stream`). Each has a CPU twin with the same
// argument order in <op>.h and shares its per-element math through <op>_math.h.
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include <cuda_runtime.h>

#include <cstdint>

namespace moekit::kernels {

void rmsnorm_forward_cuda(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                          cudaStream_t stream);
void swiglu_forward_cuda(float* h, const float* gu, int64_t rows, int64_t width, cudaStream_t stream);
void swiglu_backward_cuda(float* dgu, const float* dh, const float* gu, int64_t rows, int64_t width,
                          cudaStream_t stream);

}  // namespace moekit::kernels
#endif
