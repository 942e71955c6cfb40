#include "optim/adamw_cuda.h"

namespace moekit::optim {

namespace {

__global__ void adamw_kernel(float* p, float* m, float* v, const float* g, __nv_bfloat16* w, int64_t n,
                             AdamWScalars s, unsigned long long* bad) {
  unsigned long long mine = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (m) adamw_element(p + i, m + i, v + i, g[i], s);
    if (w) w[i] = __ushort_as_bfloat16(f32_to_bf16(p[i]));
    // A non-finite exp_avg makes the master non-finite; exp_avg_sq = inf would not.
    mine += isfinite(p[i]) && (!m || isfinite(v[i])) ? 0 : 1;
  }
  if (mine) atomicAdd(bad, mine);
}

}  // namespace

void adamw_step_cuda(const cuda::Context& ctx, float* p, float* m, float* v, const float* g, cuda::bf16* w_bf16,
                     int64_t n, const AdamWScalars& s, unsigned long long* bad) {
  if (n == 0) return;
  adamw_kernel<<<cuda::grid_for(n), 256, 0, ctx.stream()>>>(p, m, v, g, w_bf16, n, s, bad);
  MOEKIT_CUDA_LAUNCHED("adamw_step", ctx.stream());
}

}  // namespace moekit::optim
