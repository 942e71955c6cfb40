// The CUDA backend: every op forwards to its CUDA kernel (kernels/*_cuda.h, moe/moe_cuda.h,
// optim/adamw_cuda.h) or cuBLAS, on one stream of one device. Activations are f32 or bf16 (the
// kernels are instantiated for both); statistics, parameters and gradients are f32.
//
// Ordering (backend.h): every op, copy and fill is issued on the context's stream, in order.
// upload() copies from pageable host memory with cudaMemcpyAsync on that stream, which returns
// once the bytes are staged: the host buffer may be reused at once. download() and every op
// that returns a host value synchronise the stream after their copy.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/backend.h"
#include "core/check.h"
#include "kernels/attention_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/kernels_cuda.h"
#include "moe/moe_cuda.h"
#include "optim/adamw_cuda.h"

namespace moekit::backend {

namespace {

using cuda::bf16;

// MOEKIT_CUDA_ATTENTION=plain selects the plain attention kernels (the reference); the default
// is the cuBLAS GEMM path (kernels/attention_cuda.h).
kernels::AttnImpl attention_impl_from_env() {
  const char* v = std::getenv("MOEKIT_CUDA_ATTENTION");
  if (!v || !*v || std::string(v) == "gemm") return kernels::AttnImpl::kGemm;
  MOEKIT_CHECK(std::string(v) == "plain", "MOEKIT_CUDA_ATTENTION='", v, "' must be gemm or plain");
  return kernels::AttnImpl::kPlain;
}

void* grow(cuda::DeviceBuffer& b, size_t bytes) {
  b.reserve(bytes);
  return b.data();
}

kernels::GemmOp gemm_op(GemmOp op) {
  switch (op) {
    case GemmOp::kNT: return kernels::GemmOp::kNT;
    case GemmOp::kNN: return kernels::GemmOp::kNN;
    case GemmOp::kTN: return kernels::GemmOp::kTN;
  }
  MOEKIT_FAIL("cuda backend: unknown GEMM op");
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, DType act) : ctx_(device), act_(act), attn_impl_(attention_impl_from_env()) {
    MOEKIT_CHECK(act == DType::kF32 || act == DType::kBF16, "cuda backend: activations must be f32 or bf16, got ",
                 dtype_name(act));
    cudaDeviceProp prop;
    MOEKIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx_.device()));
    device_name_ = prop.name;
    counter_ = cuda::DeviceArray<unsigned long long>(1);
    f64_ = cuda::DeviceArray<double>(2);
  }

  std::string name() const override {
    return "cuda:" + std::to_string(ctx_.device()) + " " + device_name_;
  }
  Device device() const override { return Device::kCUDA; }
  DType compute_dtype() const override { return act_; }

  // ---- memory ----
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    MOEKIT_CHECK(e == cudaSuccess, "cuda backend: cudaMalloc of ", bytes, " bytes on ", name(), " failed: ",
                 cudaGetErrorString(e), " (", cuda::allocated_bytes() / 1048576, " MiB held by moekit)");
    cuda::track_allocated_bytes(static_cast<int64_t>(bytes));
    return p;
  }
  void release(void* p, size_t bytes) override {
    if (!p) return;
    cudaFree(p);  // waits for the work that may still use it
    cuda::track_allocated_bytes(-static_cast<int64_t>(bytes));
  }
  void upload(void* dst, const void* host, size_t bytes) override {
    if (bytes) MOEKIT_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, ctx_.stream()));
  }
  void download(void* host, const void* src, size_t bytes) override {
    if (bytes) MOEKIT_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream()));
    ctx_.synchronize();
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes && dst != src)
      MOEKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream()));
  }
  void fill_zero(void* p, size_t bytes) override {
    if (bytes) MOEKIT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx_.stream()));
  }
  void synchronize() override { ctx_.synchronize(); }
  // Every device allocation of the process (the backend's buffers and the kernels' workspaces:
  // what the memory plan of `moekit cost` predicts).
  int64_t allocated_bytes() const override { return cuda::allocated_bytes(); }
  int64_t peak_allocated_bytes() const override { return cuda::peak_allocated_bytes(); }
  double device_memory_used_mib() const override {
    size_t free_b = 0, total_b = 0;
    MOEKIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return static_cast<double>(total_b - free_b) / (1024.0 * 1024.0);
  }
  double peak_flops() const override {
    // reference/performance-anchors.md: dense bf16 tensor-core peaks. f32 runs on the same
    // tensor cores only with TF32, which moekit does not enable: no figure for it.
    if (act_ != DType::kBF16) return 0.0;
    for (const char* hopper : {"H100", "H200", "H800"})
      if (device_name_.find(hopper) != std::string::npos) return 989.4e12;
    if (device_name_.find("A100") != std::string::npos) return 312e12;
    return 0.0;
  }

  // ---- linear algebra ----
  void gemm(const Gemm& g, void* c, const void* a, const void* b) override {
    kernels::GemmArgs k;
    k.op = gemm_op(g.op);
    k.m = g.m;
    k.n = g.n;
    k.k = g.k;
    k.ab = g.ab;
    k.c = g.c;
    k.alpha = g.alpha;
    k.beta = g.beta;
    kernels::gemm_cuda(ctx_, k, c, a, b);
  }
  void add_bias(void* y, const float* bias, int64_t rows, int64_t cols) override {
    act_switch([&](auto t) { kernels::add_bias_cuda(ctx_, A(t, y), bias, rows, cols); });
  }
  void bias_grad(float* dbias, const void* dy, int64_t rows, int64_t cols) override {
    act_switch([&](auto t) { kernels::bias_grad_cuda(ctx_, dbias, C(t, dy), rows, cols); });
  }

  // ---- elementwise and reductions ----
  void add(void* out, const void* a, const void* b, int64_t n) override {
    act_switch([&](auto t) { kernels::add_cuda(ctx_, A(t, out), C(t, a), C(t, b), n); });
  }
  void to_f32(float* out, const void* in, int64_t n) override {
    if (act_ == DType::kF32) copy(out, in, static_cast<size_t>(n) * sizeof(float));
    else kernels::bf16_to_f32_cuda(ctx_, out, static_cast<const bf16*>(in), n);
  }
  void from_f32(void* out, const float* in, int64_t n) override {
    if (act_ == DType::kF32) copy(out, in, static_cast<size_t>(n) * sizeof(float));
    else kernels::f32_to_bf16_cuda(ctx_, static_cast<bf16*>(out), in, n);
  }
  void scale(float* x, float factor, int64_t n) override { kernels::scale_cuda(ctx_, x, factor, n); }
  double sum_squares(const float* x, int64_t n) override {
    if (n == 0) return 0.0;
    kernels::sum_squares_cuda(ctx_, f64_.data(), x, n);
    double h = 0;
    download(&h, f64_.data(), sizeof(double));
    return h;
  }
  int64_t count_nonfinite(const float* x, int64_t n) override {
    reset_counter();
    kernels::count_nonfinite_cuda(ctx_, counter_.data(), x, n);
    return read_counter();
  }
  bool round_through_f16(float* x, float s, int64_t n) override {
    reset_counter();
    kernels::round_through_f16_cuda(ctx_, counter_.data(), x, s, n);
    return read_counter() != 0;
  }

  // ---- layers ----
  void rmsnorm_forward(void* y, float* rstd, const void* x, const float* w, int64_t rows, int64_t dim,
                       float eps) override {
    act_switch([&](auto t) { kernels::rmsnorm_forward_cuda(ctx_, A(t, y), rstd, C(t, x), w, rows, dim, eps); });
  }
  void rmsnorm_backward(void* dx, float* dw, const void* dy, const void* x, const float* w, const float* rstd,
                        int64_t rows, int64_t dim, bool accumulate) override {
    act_switch([&](auto t) {
      kernels::rmsnorm_backward_cuda(ctx_, A(t, dx), dw, C(t, dy), C(t, x), w, rstd, rows, dim, accumulate);
    });
  }
  void rope(void* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
            bool inverse) override {
    act_switch([&](auto t) { kernels::rope_apply_cuda(ctx_, A(t, x), cos, sin, batch, seq, heads, head_dim, inverse); });
  }
  int64_t attention_saved_floats(const AttnShape& s) const override {
    return s.batch * s.heads * s.seq;  // one log-sum-exp per (sequence, head, query)
  }
  void attention_forward(void* out, float* saved, const void* q, const void* k, const void* v,
                         const AttnShape& s) override {
    act_switch([&](auto t) {
      kernels::attention_forward_cuda(ctx_, A(t, out), saved, C(t, q), C(t, k), C(t, v), s, attn_impl_, &attn_ws_);
    });
  }
  void attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* out, const float* saved,
                          const void* q, const void* k, const void* v, const AttnShape& s) override {
    auto* delta = static_cast<float*>(grow(delta_, static_cast<size_t>(s.batch * s.heads * s.seq) * sizeof(float)));
    act_switch([&](auto t) {
      kernels::attention_backward_cuda(ctx_, A(t, dq), A(t, dk), A(t, dv), delta, C(t, dout), C(t, out), saved,
                                       C(t, q), C(t, k), C(t, v), s, attn_impl_, &attn_ws_);
    });
  }
  void swiglu_forward(void* act, const void* gu, int64_t rows, int64_t width) override {
    act_switch([&](auto t) { kernels::swiglu_forward_cuda(ctx_, A(t, act), C(t, gu), rows, width); });
  }
  void swiglu_backward(void* dgu, const void* dact, const void* gu, int64_t rows, int64_t width) override {
    act_switch([&](auto t) { kernels::swiglu_backward_cuda(ctx_, A(t, dgu), C(t, dact), C(t, gu), rows, width); });
  }
  void embedding_forward(void* x, const float* table, const int64_t* ids, int64_t tokens, int64_t hidden) override {
    act_switch([&](auto t) { kernels::embedding_forward_cuda(ctx_, A(t, x), table, ids, tokens, hidden); });
  }
  void embedding_backward(float* dtable, const void* dx, const int64_t* ids, int64_t tokens,
                          int64_t hidden) override {
    act_switch([&](auto t) { kernels::embedding_backward_cuda(ctx_, dtable, C(t, dx), ids, tokens, hidden); });
  }
  double cross_entropy(void* dlogits, const void* logits, const int64_t* targets, int64_t rows, int64_t vocab,
                       float grad_scale) override {
    auto* loss_rows = static_cast<float*>(grow(loss_rows_, static_cast<size_t>(std::max<int64_t>(rows, 1)) * 4));
    act_switch([&](auto t) {
      kernels::cross_entropy_cuda(ctx_, loss_rows, dlogits ? A(t, dlogits) : nullptr, C(t, logits), targets, rows,
                                  vocab, grad_scale);
    });
    kernels::sum_cuda(ctx_, f64_.data(), loss_rows, rows);
    double h = 0;
    download(&h, f64_.data(), sizeof(double));
    return h;
  }
  void sigmoid_gate_forward(void* y, float* gate, const void* s, int64_t tokens, int64_t hidden) override {
    act_switch([&](auto t) { kernels::sigmoid_gate_forward_cuda(ctx_, A(t, y), gate, C(t, s), tokens, hidden); });
  }
  void sigmoid_gate_backward(void* ds, void* da, const void* dy, const void* s, const float* gate, int64_t tokens,
                             int64_t hidden) override {
    act_switch([&](auto t) {
      kernels::sigmoid_gate_backward_cuda(ctx_, A(t, ds), A(t, da), C(t, dy), C(t, s), gate, tokens, hidden);
    });
  }

  // ---- MoE ----
  void router_forward(float* scores, float* lse, int32_t* idx, float* weights, const float* logits, const float* bias,
                      const RouterSpec& r, int64_t tokens) override {
    moe::router_forward_cuda(ctx_, scores, lse, idx, weights, logits, bias, tokens, r.experts, r.topk, r.norm_topk,
                             r.score == ScoreFunction::kSigmoid);
  }
  void router_backward(void* dlogits, const float* scores, const float* lse, const int32_t* idx,
                       const float* weights, const float* dweights, const float* dscore, float z_scale,
                       const RouterSpec& r, int64_t tokens) override {
    act_switch([&](auto t) {
      moe::router_backward_cuda(ctx_, A(t, dlogits), scores, lse, idx, weights, dweights, dscore, z_scale, tokens,
                                r.experts, r.topk, r.norm_topk, r.score == ScoreFunction::kSigmoid);
    });
  }
  void router_stats(double* score_sum, double* lse_sq_sum, const float* scores, const float* lse, int64_t tokens,
                    int64_t experts) override {
    auto* sums = static_cast<double*>(grow(stats_, static_cast<size_t>(experts + 1) * sizeof(double)));
    moe::score_sum_cuda(ctx_, sums, scores, tokens, experts);
    kernels::sum_squares_cuda(ctx_, sums + experts, lse, tokens);
    std::vector<double> h(static_cast<size_t>(experts + 1));
    download(h.data(), sums, h.size() * sizeof(double));
    std::copy(h.begin(), h.begin() + experts, score_sum);
    *lse_sq_sum = h[experts];
  }
  std::vector<int64_t> dispatch_plan(int32_t* row_of, int32_t* token_of, const int32_t* idx, int64_t tokens,
                                     int64_t topk, int64_t experts, int64_t capacity) override {
    auto* counts = static_cast<int32_t*>(grow(plan_, static_cast<size_t>(2 * experts + 1) * sizeof(int32_t)));
    moe::dispatch_plan_cuda(ctx_, counts, counts + experts, row_of, token_of, idx, tokens, topk, experts, capacity);
    // The grouped GEMMs and the expert-parallel exchange need the counts on the host: one small
    // copy per MoE layer.
    std::vector<int32_t> c32(static_cast<size_t>(experts));
    download(c32.data(), counts, c32.size() * sizeof(int32_t));
    return std::vector<int64_t>(c32.begin(), c32.end());
  }
  void gather_rows(void* xp, const void* x, const int32_t* src, int64_t rows, int64_t hidden) override {
    act_switch([&](auto t) { moe::dispatch_rows_cuda(ctx_, A(t, xp), C(t, x), src, rows, hidden); });
  }
  void scatter_rows(void* out, const void* in, const int32_t* dst, int64_t rows, int64_t hidden) override {
    act_switch([&](auto t) { moe::scatter_rows_cuda(ctx_, A(t, out), C(t, in), dst, rows, hidden); });
  }
  void combine_rows(void* out, float beta, const void* yp, const float* weights, const int32_t* row_of, int64_t tokens,
                    int64_t topk, int64_t hidden) override {
    act_switch([&](auto t) {
      moe::combine_rows_cuda(ctx_, A(t, out), beta, C(t, yp), weights, row_of, tokens, topk, hidden);
    });
  }
  void combine_rows_backward(void* dyp, float* dweights, const void* dout, const void* yp, const float* weights,
                             const int32_t* row_of, int64_t tokens, int64_t topk, int64_t hidden) override {
    act_switch([&](auto t) {
      moe::combine_rows_backward_cuda(ctx_, A(t, dyp), dweights, C(t, dout), C(t, yp), weights, row_of, tokens, topk,
                                      hidden);
    });
  }
  void dispatch_rows_backward(void* dx, float beta, const void* dxp, const int32_t* row_of, int64_t tokens,
                              int64_t topk, int64_t hidden) override {
    act_switch([&](auto t) {
      moe::dispatch_rows_backward_cuda(ctx_, A(t, dx), beta, C(t, dxp), row_of, tokens, topk, hidden);
    });
  }
  void experts_forward(void* y, void* gu, void* act, const void* x, const void* stack, const int64_t* counts,
                       int64_t num, int64_t H, int64_t I) override {
    // Each local expert over its rows: [gate; up] then down, one grouped GEMM each.
    const int64_t rows = total(counts, num), stride = 3 * I * H;
    const size_t es = dtype_size(act_);
    kernels::grouped_gemm_cuda(ctx_, &grouped_, kernels::GemmOp::kNT, act_, counts, num, 2 * I, H, gu, x, stack,
                               stride);
    swiglu_forward(act, gu, rows, I);
    kernels::grouped_gemm_cuda(ctx_, &grouped_, kernels::GemmOp::kNT, act_, counts, num, H, I, y, act,
                               static_cast<const char*>(stack) + 2 * I * H * es, stride);
  }
  void experts_backward(void* dx, float* dstack, const void* dy, const void* x, const void* gu, const void* act,
                        const void* stack, const int64_t* counts, int64_t num, int64_t H, int64_t I) override {
    const int64_t rows = std::max<int64_t>(total(counts, num), 1), stride = 3 * I * H;
    const size_t es = dtype_size(act_);
    void* dact = grow(scr_a_, static_cast<size_t>(rows * I) * es);
    void* dgu = grow(scr_b_, static_cast<size_t>(rows * 2 * I) * es);
    const void* down = static_cast<const char*>(stack) + 2 * I * H * es;
    kernels::grouped_gemm_cuda(ctx_, &grouped_, kernels::GemmOp::kNN, act_, counts, num, I, H, dact, dy, down,
                               stride);  // dact = dy W_down
    kernels::grouped_weight_grad_cuda(ctx_, act_, counts, num, H, I, dstack + 2 * I * H, stride, dy,
                                      act);  // dW_down += dy^T act
    swiglu_backward(dgu, dact, gu, total(counts, num), I);
    kernels::grouped_weight_grad_cuda(ctx_, act_, counts, num, 2 * I, H, dstack, stride, dgu, x);  // dW_gu += dgu^T x
    kernels::grouped_gemm_cuda(ctx_, &grouped_, kernels::GemmOp::kNN, act_, counts, num, H, 2 * I, dx, dgu, stack,
                               stride);  // dx = dgu W_gu
  }

  // ---- optimizer ----
  int64_t adamw(const std::vector<AdamWTensor>& ts, RoundCopy kind, const optim::AdamWScalars& base,
                const optim::AdamWScalars& decayed) override {
    MOEKIT_CHECK(kind == RoundCopy::kNone || kind == RoundCopy::kBf16, "cuda backend: AdamW writes bf16 compute "
                 "copies only (fp16 is not supported on GPUs)");
    reset_counter();
    for (const AdamWTensor& a : ts)
      optim::adamw_step_cuda(ctx_, a.p, a.m, a.v, a.g, kind == RoundCopy::kBf16 ? static_cast<bf16*>(a.copy) : nullptr,
                             a.n, a.decay ? decayed : base, counter_.data());
    return read_counter();
  }

 private:
  // Calls f with a tag of the activation type: `float` or `bf16` (as a null pointer of it).
  template <typename F>
  void act_switch(F&& f) {
    if (act_ == DType::kF32) f(static_cast<float*>(nullptr));
    else f(static_cast<bf16*>(nullptr));
  }
  template <typename T>
  static T* A(T*, void* p) { return static_cast<T*>(p); }
  template <typename T>
  static const T* C(T*, const void* p) { return static_cast<const T*>(p); }
  static int64_t total(const int64_t* counts, int64_t n) {
    int64_t s = 0;
    for (int64_t e = 0; e < n; ++e) s += counts[e];
    return s;
  }
  void reset_counter() { MOEKIT_CUDA_CHECK(cudaMemsetAsync(counter_.data(), 0, sizeof(unsigned long long), ctx_.stream())); }
  int64_t read_counter() {
    unsigned long long h = 0;
    download(&h, counter_.data(), sizeof(h));
    return static_cast<int64_t>(h);
  }

  cuda::Context ctx_;
  DType act_;
  kernels::AttnImpl attn_impl_;
  std::string device_name_;
  kernels::AttnWorkspace attn_ws_;
  kernels::GroupedGemm grouped_;
  cuda::DeviceBuffer delta_, loss_rows_, stats_, plan_, scr_a_, scr_b_;
  cuda::DeviceArray<unsigned long long> counter_;
  cuda::DeviceArray<double> f64_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda(int device, DType act) { return std::make_unique<CudaBackend>(device, act); }

}  // namespace moekit::backend
