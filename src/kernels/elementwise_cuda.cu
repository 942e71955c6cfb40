// CUDA elementwise kernels and small reductions of the GPU model: embedding gather/scatter,
// residual add, bias add and its gradient, f32 <-> bf16 casts, fixed-order sums (loss, gradient
// norm), scaling, and the sigmoid gate of the shared expert (math as moe_layer.cpp).
#include "core/half.h"
#include "kernels/cuda_types.cuh"
#include "kernels/kernels_cuda.h"
#include "kernels/swiglu_math.h"

namespace moekit::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kRowsPerPart = 256;  // rows per partial sum of a bias gradient
constexpr int kSumBlocks = 512;        // partial sums of sum_cuda / sum_squares_cuda

#define GRID_STRIDE(i, n)                                                                         \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T>
__global__ void embedding_forward_kernel(T* x, const float* table, const int64_t* ids, int64_t tokens, int64_t H) {
  GRID_STRIDE(i, tokens * H) { x[i] = st<T>(table[ids[i / H] * H + i % H]); }
}

template <typename T>
__global__ void embedding_backward_kernel(float* dtable, const T* dx, const int64_t* ids, int64_t tokens, int64_t H) {
  GRID_STRIDE(i, tokens * H) { atomicAdd(dtable + ids[i / H] * H + i % H, ld(dx[i])); }
}

template <typename T>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  GRID_STRIDE(i, n) { out[i] = st<T>(ld(a[i]) + ld(b[i])); }
}

template <typename T>
__global__ void add_bias_kernel(T* y, const float* bias, int64_t rows, int64_t cols) {
  GRID_STRIDE(i, rows * cols) { y[i] = st<T>(ld(y[i]) + bias[i % cols]); }
}

// partial (parts, cols): block (x, y) sums rows [y*R, (y+1)*R) of its columns.
template <typename T>
__global__ void column_partial_kernel(float* partial, const T* dy, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * kRowsPerPart, r1 = r0 + kRowsPerPart < rows ? r0 + kRowsPerPart : rows;
  float s = 0.f;
  for (int64_t r = r0; r < r1; ++r) s += ld(dy[r * cols + c]);
  partial[blockIdx.y * cols + c] = s;
}

__global__ void f32_to_bf16_kernel(__nv_bfloat16* out, const float* in, int64_t n) {
  // The same round-to-nearest-even (and NaN handling) as the CPU conversion in core/half.h.
  GRID_STRIDE(i, n) { out[i] = __ushort_as_bfloat16(f32_to_bf16(in[i])); }
}

__global__ void bf16_to_f32_kernel(float* out, const __nv_bfloat16* in, int64_t n) {
  GRID_STRIDE(i, n) { out[i] = __bfloat162float(in[i]); }
}

template <bool kSquare>
__global__ void sum_partial_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double red[32];
  double s = 0;
  GRID_STRIDE(i, n) {
    const double v = x[i];
    s += kSquare ? v * v : v;
  }
  s = block_sum_f64(s, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_final_kernel(double* out, const double* partial, int parts) {
  __shared__ double red[32];
  double s = 0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) s += partial[i];
  s = block_sum_f64(s, red);
  if (threadIdx.x == 0) *out = s;
}

__global__ void scale_kernel(float* x, float factor, int64_t n) {
  GRID_STRIDE(i, n) { x[i] *= factor; }
}

__global__ void count_nonfinite_kernel(unsigned long long* count, const float* x, int64_t n) {
  unsigned long long mine = 0;
  GRID_STRIDE(i, n) { mine += isfinite(x[i]) ? 0 : 1; }
  if (mine) atomicAdd(count, mine);
}

__global__ void round_through_f16_kernel(unsigned long long* overflow, float* x, float s, int64_t n) {
  unsigned long long mine = 0;
  GRID_STRIDE(i, n) {
    const float h = f16_to_f32(f32_to_f16(x[i] * s));
    mine += isfinite(h) ? 0 : 1;
    x[i] = h / s;
  }
  if (mine) atomicAdd(overflow, mine);
}

// One block per token: g = sigmoid(a) in place, y += g * s.
template <typename T>
__global__ void sigmoid_gate_forward_kernel(T* y, float* gate, const T* s, int64_t H) {
  const int64_t t = blockIdx.x;
  const float g = sigmoidf_(gate[t]);
  __syncthreads();  // every thread has read the logit before thread 0 overwrites it
  if (threadIdx.x == 0) gate[t] = g;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) y[t * H + i] = st<T>(ld(y[t * H + i]) + g * ld(s[t * H + i]));
}

template <typename T>
__global__ void sigmoid_gate_backward_kernel(T* ds, T* da, const T* dy, const T* s, const float* gate, int64_t H) {
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  const float g = gate[t];
  float dot = 0.f;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    const float d = ld(dy[t * H + i]);
    dot += d * ld(s[t * H + i]);
    ds[t * H + i] = st<T>(g * d);
  }
  dot = block_sum(dot, red);
  if (threadIdx.x == 0) da[t] = st<T>(dot * g * (1.f - g));
}

}  // namespace

template <typename T>
void embedding_forward_cuda(const Context& ctx, T* x, const float* table, const int64_t* ids, int64_t tokens,
                            int64_t hidden) {
  if (tokens * hidden == 0) return;
  embedding_forward_kernel<T><<<cuda::grid_for(tokens * hidden), kThreads, 0, ctx.stream()>>>(x, table, ids, tokens,
                                                                                              hidden);
  MOEKIT_CUDA_LAUNCHED("embedding_forward", ctx.stream());
}

template <typename T>
void embedding_backward_cuda(const Context& ctx, float* dtable, const T* dx, const int64_t* ids, int64_t tokens,
                             int64_t hidden) {
  if (tokens * hidden == 0) return;
  embedding_backward_kernel<T><<<cuda::grid_for(tokens * hidden), kThreads, 0, ctx.stream()>>>(dtable, dx, ids,
                                                                                               tokens, hidden);
  MOEKIT_CUDA_LAUNCHED("embedding_backward", ctx.stream());
}

template <typename T>
void add_cuda(const Context& ctx, T* out, const T* a, const T* b, int64_t n) {
  if (n == 0) return;
  add_kernel<T><<<cuda::grid_for(n), kThreads, 0, ctx.stream()>>>(out, a, b, n);
  MOEKIT_CUDA_LAUNCHED("add", ctx.stream());
}

template <typename T>
void add_bias_cuda(const Context& ctx, T* y, const float* bias, int64_t rows, int64_t cols) {
  if (rows * cols == 0) return;
  add_bias_kernel<T><<<cuda::grid_for(rows * cols), kThreads, 0, ctx.stream()>>>(y, bias, rows, cols);
  MOEKIT_CUDA_LAUNCHED("add_bias", ctx.stream());
}

template <typename T>
void bias_grad_cuda(const Context& ctx, float* dbias, const T* dy, int64_t rows, int64_t cols) {
  if (rows * cols == 0) return;
  const int64_t parts = (rows + kRowsPerPart - 1) / kRowsPerPart;
  MOEKIT_CHECK(parts <= 65535, "bias_grad_cuda: ", rows, " rows exceed the supported ", 65535 * kRowsPerPart);
  auto* partial = static_cast<float*>(ctx.scratch(static_cast<size_t>(parts * cols) * sizeof(float)));
  const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads), static_cast<unsigned>(parts));
  column_partial_kernel<T><<<grid, kThreads, 0, ctx.stream()>>>(partial, dy, rows, cols);
  MOEKIT_CUDA_LAUNCHED("bias_grad.partial", ctx.stream());
  column_sum_kernel<><<<static_cast<unsigned>((cols + kThreads - 1) / kThreads), kThreads, 0, ctx.stream()>>>(
      dbias, partial, parts, cols);
  MOEKIT_CUDA_LAUNCHED("bias_grad.sum", ctx.stream());
}

void f32_to_bf16_cuda(const Context& ctx, cuda::bf16* out, const float* in, int64_t n) {
  if (n == 0) return;
  f32_to_bf16_kernel<<<cuda::grid_for(n), kThreads, 0, ctx.stream()>>>(out, in, n);
  MOEKIT_CUDA_LAUNCHED("f32_to_bf16", ctx.stream());
}

void bf16_to_f32_cuda(const Context& ctx, float* out, const cuda::bf16* in, int64_t n) {
  if (n == 0) return;
  bf16_to_f32_kernel<<<cuda::grid_for(n), kThreads, 0, ctx.stream()>>>(out, in, n);
  MOEKIT_CUDA_LAUNCHED("bf16_to_f32", ctx.stream());
}

namespace {
template <bool kSquare>
void fixed_order_sum(const Context& ctx, double* out, const float* x, int64_t n, const char* name) {
  auto* partial = static_cast<double*>(ctx.scratch(kSumBlocks * sizeof(double)));
  // A fixed grid (not one sized by n): each thread's share, and so the order of additions, is a
  // function of n alone.
  sum_partial_kernel<kSquare><<<kSumBlocks, kThreads, 0, ctx.stream()>>>(partial, x, n);
  MOEKIT_CUDA_LAUNCHED(name, ctx.stream());
  sum_final_kernel<<<1, kThreads, 0, ctx.stream()>>>(out, partial, kSumBlocks);
  MOEKIT_CUDA_LAUNCHED(name, ctx.stream());
}
}  // namespace

void sum_cuda(const Context& ctx, double* out, const float* x, int64_t n) {
  fixed_order_sum<false>(ctx, out, x, n, "sum");
}

void sum_squares_cuda(const Context& ctx, double* out, const float* x, int64_t n) {
  fixed_order_sum<true>(ctx, out, x, n, "sum_squares");
}

void scale_cuda(const Context& ctx, float* x, float factor, int64_t n) {
  if (n == 0) return;
  scale_kernel<<<cuda::grid_for(n), kThreads, 0, ctx.stream()>>>(x, factor, n);
  MOEKIT_CUDA_LAUNCHED("scale", ctx.stream());
}

void count_nonfinite_cuda(const Context& ctx, unsigned long long* count, const float* x, int64_t n) {
  if (n == 0) return;
  count_nonfinite_kernel<<<cuda::grid_for(n), kThreads, 0, ctx.stream()>>>(count, x, n);
  MOEKIT_CUDA_LAUNCHED("count_nonfinite", ctx.stream());
}

void round_through_f16_cuda(const Context& ctx, unsigned long long* overflow, float* x, float s, int64_t n) {
  if (n == 0) return;
  round_through_f16_kernel<<<cuda::grid_for(n), kThreads, 0, ctx.stream()>>>(overflow, x, s, n);
  MOEKIT_CUDA_LAUNCHED("round_through_f16", ctx.stream());
}

template <typename T>
void sigmoid_gate_forward_cuda(const Context& ctx, T* y, float* gate, const T* s, int64_t tokens, int64_t hidden) {
  if (tokens == 0) return;
  sigmoid_gate_forward_kernel<T><<<static_cast<unsigned>(tokens), kThreads, 0, ctx.stream()>>>(y, gate, s, hidden);
  MOEKIT_CUDA_LAUNCHED("sigmoid_gate_forward", ctx.stream());
}

template <typename T>
void sigmoid_gate_backward_cuda(const Context& ctx, T* ds, T* da, const T* dy, const T* s, const float* gate,
                                int64_t tokens, int64_t hidden) {
  if (tokens == 0) return;
  sigmoid_gate_backward_kernel<T><<<static_cast<unsigned>(tokens), kThreads, 0, ctx.stream()>>>(ds, da, dy, s, gate,
                                                                                                hidden);
  MOEKIT_CUDA_LAUNCHED("sigmoid_gate_backward", ctx.stream());
}

#define INSTANTIATE(T)                                                                                          \
  template void embedding_forward_cuda<T>(const Context&, T*, const float*, const int64_t*, int64_t, int64_t); \
  template void embedding_backward_cuda<T>(const Context&, float*, const T*, const int64_t*, int64_t, int64_t); \
  template void add_cuda<T>(const Context&, T*, const T*, const T*, int64_t);                                  \
  template void add_bias_cuda<T>(const Context&, T*, const float*, int64_t, int64_t);                          \
  template void bias_grad_cuda<T>(const Context&, float*, const T*, int64_t, int64_t);                         \
  template void sigmoid_gate_forward_cuda<T>(const Context&, T*, float*, const T*, int64_t, int64_t);          \
  template void sigmoid_gate_backward_cuda<T>(const Context&, T*, T*, const T*, const T*, const float*, int64_t, \
                                              int64_t)
MOEKIT_INSTANTIATE_ACT(INSTANTIATE);

}  // namespace moekit::kernels
