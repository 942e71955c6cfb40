// Device-side helpers shared by the CUDA kernels: the DType of an activation type, loads and stores
// that widen to and round from f32 whatever the activation type, the explicit instantiation list, and block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "core/dtype.h"

namespace moekit::kernels {

// The DType of an activation type: what GEMM arguments and byte sizes are given in.
template <typename T>
constexpr DType act_dtype() {
  return std::is_same_v<T, float> ? DType::kF32 : DType::kBF16;
}

__device__ __forceinline__ float ld(float x) { return x; }
__device__ __forceinline__ float ld(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T st(float x);
template <>
__device__ __forceinline__ float st<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `shared` holds 32 floats. The order of additions is fixed by the thread layout.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? shared[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? shared[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ double block_sum_f64(double v, double* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? shared[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// out[i] += sum over p of partial[p * dim + i], in p order (the second half of a deterministic
// reduction over rows). A template so that every file can instantiate it without clashes.
template <int kUnused = 0>
__global__ void column_sum_kernel(float* out, const float* partial, int64_t parts, int64_t dim) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= dim) return;
  float s = 0.f;
  for (int64_t p = 0; p < parts; ++p) s += partial[p * dim + i];
  out[i] += s;
}

}  // namespace moekit::kernels

// Explicit instantiations of a kernel wrapper template for both activation types.
#define MOEKIT_INSTANTIATE_ACT(macro) \
  macro(float);                       \
  macro(__nv_bfloat16)
