// CUDA RoPE: one thread per rotated pair, in place; math from rope_math.h.
#include "kernels/cuda_types.cuh"
#include "kernels/kernels_cuda.h"
#include "kernels/rope_math.h"

namespace moekit::kernels {

namespace {

template <typename T>
__global__ void rope_kernel(T* x, const float* cos, const float* sin, int64_t rows, int64_t seq, int64_t heads,
                            int64_t head_dim, float sign) {
  const int64_t half = head_dim / 2, n = rows * heads * half;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % half, h = (i / half) % heads, row = i / (half * heads), pos = row % seq;
    T* v = x + (row * heads + h) * head_dim;
    const float* cp = cos + pos * head_dim;
    const float* sp = sin + pos * head_dim;
    float a = ld(v[c]), b = ld(v[c + half]);
    rope_pair(&a, &b, cp[c], sp[c], cp[c + half], sp[c + half], sign);
    v[c] = st<T>(a);
    v[c + half] = st<T>(b);
  }
}

}  // namespace

template <typename T>
void rope_apply_cuda(const Context& ctx, T* x, const float* cos, const float* sin, int64_t batch, int64_t seq,
                     int64_t heads, int64_t head_dim, bool inverse) {
  const int64_t n = batch * seq * heads * (head_dim / 2);
  if (n == 0) return;
  rope_kernel<T><<<cuda::grid_for(n), 256, 0, ctx.stream()>>>(x, cos, sin, batch * seq, seq, heads, head_dim,
                                                             inverse ? -1.f : 1.f);
  MOEKIT_CUDA_LAUNCHED("rope_apply", ctx.stream());
}

#define INSTANTIATE(T)                                                                                           \
  template void rope_apply_cuda<T>(const Context&, T*, const float*, const float*, int64_t, int64_t, int64_t, \
                                   int64_t, bool)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::kernels
