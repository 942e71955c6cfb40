// CUDA softmax cross-entropy fused with its gradient: one block per row, three passes over the
// row (max, sum of exponentials, gradient), statistics in f32; math from cross_entropy_math.h.
// The gradient may overwrite the logits in place (the training step does, to save a (T, V)
// buffer): each thread reads an element before it writes it, and the target logit is read
// before any write.
#include "kernels/cross_entropy_math.h"
#include "kernels/cuda_types.cuh"
#include "kernels/kernels_cuda.h"

namespace moekit::kernels {

namespace {

constexpr int kThreads = 512;

template <typename T>
__global__ void cross_entropy_kernel(float* loss_rows, T* dlogits, const T* logits, const int64_t* targets,
                                     int64_t vocab, float grad_scale) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const T* z = logits + row * vocab;
  T* dz = dlogits ? dlogits + row * vocab : nullptr;
  const int64_t target = targets[row];
  if (target < 0) {
    if (threadIdx.x == 0) loss_rows[row] = 0.f;
    if (dz)
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) dz[i] = st<T>(0.f);
    return;
  }
  const float z_target = ld(z[target]);
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, ld(z[i]));
  mx = block_max(mx, red);
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(ld(z[i]) - mx);
  sum = block_sum(sum, red);  // its __syncthreads also orders every read of z_target before the writes
  const float lse = mx + logf(sum);
  if (threadIdx.x == 0) loss_rows[row] = lse - z_target;
  if (!dz) return;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float g = ce_grad<float>(ld(z[i]), lse, grad_scale);
    dz[i] = st<T>(i == target ? g - grad_scale : g);
  }
}

}  // namespace

template <typename T>
void cross_entropy_cuda(const Context& ctx, float* loss_rows, T* dlogits, const T* logits, const int64_t* targets,
                        int64_t rows, int64_t vocab, float grad_scale) {
  if (rows == 0) return;
  cross_entropy_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream()>>>(loss_rows, dlogits, logits,
                                                                                      targets, vocab, grad_scale);
  MOEKIT_CUDA_LAUNCHED("cross_entropy", ctx.stream());
}

#define INSTANTIATE(T)                                                                                          \
  template void cross_entropy_cuda<T>(const Context&, float*, T*, const T*, const int64_t*, int64_t, int64_t, \
                                      float)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::kernels
