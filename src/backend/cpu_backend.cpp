// The CPU backend: every op forwards to its *_cpu kernel (OpenBLAS/Eigen GEMMs, OpenMP loops).
// Activations are f32; device memory is 64-byte aligned host memory.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "core/check.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "optim/adamw_math.h"

namespace moekit::backend {

namespace {

using F = float;
F* f(void* p) { return static_cast<F*>(p); }
const F* f(const void* p) { return static_cast<const F*>(p); }

constexpr int64_t kAdamChunk = 1 << 15;     // elements per unit of parallel AdamW work
constexpr int64_t kAdamParallelMin = 1 << 16;  // below this many elements AdamW runs on one thread

// Update elements [b, e) of one tensor (p the master, w the rounded copy when kDtype != 0) and
// count the elements whose master or second moment is not finite afterwards (a non-finite
// exp_avg makes the master non-finite; exp_avg_sq = inf would not). The five arrays never overlap (distinct
// buffers) and the scalars are a local copy: saying so lets the loop vectorise.
template <int kDtype>
int64_t adamw_range(float* __restrict p, float* __restrict m, float* __restrict v, const float* __restrict g,
                    float* __restrict w, int64_t b, int64_t e, const optim::AdamWScalars s) {
  int64_t bad = 0;
  for (int64_t i = b; i < e; ++i) {
    optim::adamw_element(p + i, m + i, v + i, g[i], s);
    if (kDtype != 0) w[i] = optim::round_to_compute<kDtype>(p[i]);
    bad += std::isfinite(p[i]) && std::isfinite(v[i]) ? 0 : 1;
  }
  return bad;
}

template <int kDtype>
int64_t round_range(float* __restrict w, const float* __restrict p, int64_t b, int64_t e) {
  int64_t bad = 0;
  for (int64_t i = b; i < e; ++i) {
    w[i] = optim::round_to_compute<kDtype>(p[i]);
    bad += std::isfinite(p[i]) ? 0 : 1;
  }
  return bad;
}

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::kCPU; }
  DType compute_dtype() const override { return DType::kF32; }

  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    MOEKIT_CHECK(p != nullptr, "cpu backend: out of memory allocating ", bytes, " bytes");
    note(static_cast<int64_t>(bytes));
    return p;
  }
  void release(void* p, size_t bytes) override {
    if (!p) return;
    std::free(p);
    allocated_.fetch_sub(static_cast<int64_t>(bytes));
  }
  void upload(void* dst, const void* host, size_t bytes) override { copy(dst, host, bytes); }
  void download(void* host, const void* src, size_t bytes) override { copy(host, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes && dst != src) std::memmove(dst, src, bytes);
  }
  void fill_zero(void* p, size_t bytes) override {
    if (bytes) std::memset(p, 0, bytes);
  }
  void synchronize() override {}
  int64_t allocated_bytes() const override { return allocated_.load(); }
  int64_t peak_allocated_bytes() const override { return peak_.load(); }

  void gemm(const Gemm& g, void* c, const void* a, const void* b) override {
    MOEKIT_CHECK(g.ab == DType::kF32 && g.c == DType::kF32, "cpu backend: GEMMs are f32 (got A/B ",
                 dtype_name(g.ab), ", C ", dtype_name(g.c), ")");
    switch (g.op) {
      case GemmOp::kNT: kernels::matmul_nt(f(c), f(a), f(b), g.m, g.n, g.k, g.beta, g.alpha); break;
      case GemmOp::kNN: kernels::matmul_nn(f(c), f(a), f(b), g.m, g.n, g.k, g.beta, g.alpha); break;
      case GemmOp::kTN: kernels::matmul_tn(f(c), f(a), f(b), g.m, g.n, g.k, g.beta, g.alpha); break;
    }
  }
  void add_bias(void* y, const float* bias, int64_t rows, int64_t cols) override {
    kernels::add_bias_cpu(f(y), bias, rows, cols);
  }
  void bias_grad(float* dbias, const void* dy, int64_t rows, int64_t cols) override {
    kernels::bias_grad_cpu(dbias, f(dy), rows, cols);
  }

  void add(void* out, const void* a, const void* b, int64_t n) override { kernels::add_cpu(f(out), f(a), f(b), n); }
  void to_f32(float* out, const void* in, int64_t n) override { copy(out, in, static_cast<size_t>(n) * sizeof(F)); }
  void from_f32(void* out, const float* in, int64_t n) override { copy(out, in, static_cast<size_t>(n) * sizeof(F)); }
  void scale(float* x, float factor, int64_t n) override { kernels::scale_cpu(x, factor, n); }
  double sum_squares(const float* x, int64_t n) override { return kernels::sum_squares_cpu(x, n); }
  int64_t count_nonfinite(const float* x, int64_t n) override { return kernels::count_nonfinite_cpu(x, n); }
  bool round_through_f16(float* x, float s, int64_t n) override { return kernels::round_through_f16_cpu(x, s, n); }

  void rmsnorm_forward(void* y, float* rstd, const void* x, const float* w, int64_t rows, int64_t dim,
                       float eps) override {
    kernels::rmsnorm_forward(f(y), rstd, f(x), w, rows, dim, eps);
  }
  void rmsnorm_backward(void* dx, float* dw, const void* dy, const void* x, const float* w, const float* rstd,
                        int64_t rows, int64_t dim, bool accumulate) override {
    kernels::rmsnorm_backward(f(dx), dw, f(dy), f(x), w, rstd, rows, dim, accumulate);
  }
  void rope(void* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
            int64_t head_dim, bool inverse) override {
    kernels::rope_apply(f(x), cos, sin, batch, seq, heads, head_dim, inverse);
  }
  int64_t attention_saved_floats(const AttnShape& s) const override {
    return s.batch * s.heads * s.seq * s.seq;  // the probabilities
  }
  void attention_forward(void* out, float* saved, const void* q, const void* k, const void* v,
                         const AttnShape& s) override {
    kernels::attention_forward(f(out), saved, f(q), f(k), f(v), s);
  }
  void attention_backward(void* dq, void* dk, void* dv, const void* dout, const void*, const float* saved,
                          const void* q, const void* k, const void* v, const AttnShape& s) override {
    kernels::attention_backward(f(dq), f(dk), f(dv), f(dout), saved, f(q), f(k), f(v), s);
  }
  void swiglu_forward(void* act, const void* gu, int64_t rows, int64_t width) override {
    kernels::swiglu_forward(f(act), f(gu), rows, width);
  }
  void swiglu_backward(void* dgu, const void* dact, const void* gu, int64_t rows, int64_t width) override {
    kernels::swiglu_backward(f(dgu), f(dact), f(gu), rows, width);
  }
  void embedding_forward(void* x, const float* table, const int64_t* ids, int64_t tokens, int64_t hidden) override {
    kernels::embedding_forward_cpu(f(x), table, ids, tokens, hidden);
  }
  void embedding_backward(float* dtable, const void* dx, const int64_t* ids, int64_t tokens,
                          int64_t hidden) override {
    kernels::embedding_backward_cpu(dtable, f(dx), ids, tokens, hidden);
  }
  double cross_entropy(void* dlogits, const void* logits, const int64_t* targets, int64_t rows, int64_t vocab,
                       float grad_scale) override {
    return kernels::cross_entropy(dlogits ? f(dlogits) : nullptr, f(logits), targets, rows, vocab, grad_scale);
  }
  void sigmoid_gate_forward(void* y, float* gate, const void* s, int64_t tokens, int64_t hidden) override {
    kernels::sigmoid_gate_forward_cpu(f(y), gate, f(s), tokens, hidden);
  }
  void sigmoid_gate_backward(void* ds, void* da, const void* dy, const void* s, const float* gate, int64_t tokens,
                             int64_t hidden) override {
    kernels::sigmoid_gate_backward_cpu(f(ds), f(da), f(dy), f(s), gate, tokens, hidden);
  }

  void router_forward(float* scores, float* lse, int32_t* idx, float* weights, const float* logits, const float* bias,
                      const RouterSpec& r, int64_t tokens) override {
    moe::router_forward_cpu(scores, lse, idx, weights, logits, bias, tokens, r.experts, r.topk, r.norm_topk,
                            r.score == ScoreFunction::kSigmoid);
  }
  void router_backward(void* dlogits, const float* scores, const float* lse, const int32_t* idx,
                       const float* weights, const float* dweights, const float* dscore, float z_scale,
                       const RouterSpec& r, int64_t tokens) override {
    moe::router_backward_cpu(f(dlogits), scores, lse, idx, weights, dweights, dscore, z_scale, tokens, r.experts,
                             r.topk, r.norm_topk, r.score == ScoreFunction::kSigmoid);
  }
  void router_stats(double* score_sum, double* lse_sq_sum, const float* scores, const float* lse, int64_t tokens,
                    int64_t experts) override {
    moe::router_stats_cpu(score_sum, lse_sq_sum, scores, lse, tokens, experts);
  }
  std::vector<int64_t> dispatch_plan(int32_t* row_of, int32_t* token_of, const int32_t* idx, int64_t tokens,
                                     int64_t topk, int64_t experts, int64_t capacity) override {
    return moe::dispatch_plan_cpu(row_of, token_of, idx, tokens, topk, experts, capacity);
  }
  void gather_rows(void* xp, const void* x, const int32_t* src, int64_t rows, int64_t hidden) override {
    moe::gather_rows_cpu(f(xp), f(x), src, rows, hidden);
  }
  void scatter_rows(void* out, const void* in, const int32_t* dst, int64_t rows, int64_t hidden) override {
    moe::scatter_rows_cpu(f(out), f(in), dst, rows, hidden);
  }
  void combine_rows(void* out, float beta, const void* yp, const float* weights, const int32_t* row_of,
                    int64_t tokens, int64_t topk, int64_t hidden) override {
    moe::combine_rows_cpu(f(out), beta, f(yp), weights, row_of, tokens, topk, hidden);
  }
  void combine_rows_backward(void* dyp, float* dweights, const void* dout, const void* yp, const float* weights,
                             const int32_t* row_of, int64_t tokens, int64_t topk, int64_t hidden) override {
    moe::combine_rows_backward_cpu(f(dyp), dweights, f(dout), f(yp), weights, row_of, tokens, topk, hidden);
  }
  void dispatch_rows_backward(void* dx, float beta, const void* dxp, const int32_t* row_of, int64_t tokens,
                              int64_t topk, int64_t hidden) override {
    moe::dispatch_rows_backward_cpu(f(dx), beta, f(dxp), row_of, tokens, topk, hidden);
  }
  void experts_forward(void* y, void* gu, void* act, const void* x, const void* stack, const int64_t* counts,
                       int64_t num, int64_t hidden, int64_t inter) override {
    moe::experts_forward_cpu(f(y), f(gu), f(act), f(x), {f(stack), nullptr, num, hidden, inter}, counts);
  }
  void experts_backward(void* dx, float* dstack, const void* dy, const void* x, const void* gu, const void* act,
                        const void* stack, const int64_t* counts, int64_t num, int64_t hidden,
                        int64_t inter) override {
    moe::experts_backward_cpu(f(dx), f(dy), f(x), f(gu), f(act), {f(stack), dstack, num, hidden, inter}, counts);
  }

  int64_t adamw(const std::vector<AdamWTensor>& ts, RoundCopy kind, const optim::AdamWScalars& base,
                const optim::AdamWScalars& decayed) override {
    MOEKIT_CHECK(kind != RoundCopy::kBf16, "cpu backend: AdamW cannot write bf16 compute copies (the CPU computes "
                 "in f32)");
    // Fixed pieces of every tensor: the work splits the same way whatever the thread count.
    struct Piece {
      size_t t;
      int64_t b, e;
    };
    std::vector<Piece> pieces;
    int64_t total = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      for (int64_t b = 0; b < ts[i].n; b += kAdamChunk) pieces.push_back({i, b, std::min(b + kAdamChunk, ts[i].n)});
      total += ts[i].n;
    }
    const int64_t np = static_cast<int64_t>(pieces.size());
    int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (total >= kAdamParallelMin)
    for (int64_t c = 0; c < np; ++c) {
      const Piece& pc = pieces[c];
      const AdamWTensor& a = ts[pc.t];
      float* w = static_cast<float*>(a.copy);
      if (!a.m) {  // refresh the copy only
        switch (kind) {
          case RoundCopy::kNone: break;
          case RoundCopy::kF32AsBf16: bad += round_range<1>(w, a.p, pc.b, pc.e); break;
          case RoundCopy::kF32AsF16: bad += round_range<2>(w, a.p, pc.b, pc.e); break;
          default: break;
        }
        continue;
      }
      const optim::AdamWScalars& s = a.decay ? decayed : base;
      switch (kind) {
        case RoundCopy::kNone: bad += adamw_range<0>(a.p, a.m, a.v, a.g, nullptr, pc.b, pc.e, s); break;
        case RoundCopy::kF32AsBf16: bad += adamw_range<1>(a.p, a.m, a.v, a.g, w, pc.b, pc.e, s); break;
        case RoundCopy::kF32AsF16: bad += adamw_range<2>(a.p, a.m, a.v, a.g, w, pc.b, pc.e, s); break;
        default: break;
      }
    }
    return bad;
  }

 private:
  void note(int64_t bytes) {
    const int64_t now = allocated_.fetch_add(bytes) + bytes;
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
  }

  std::atomic<int64_t> allocated_{0}, peak_{0};
};

}  // namespace

Backend& cpu() {
  static CpuBackend be;
  return be;
}

Buffer::Buffer(Buffer&& o) noexcept : be_(o.be_), data_(o.data_), bytes_(o.bytes_) {
  o.data_ = nullptr;
  o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    reset();
    be_ = o.be_;
    data_ = o.data_;
    bytes_ = o.bytes_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void* Buffer::reserve(size_t bytes) {
  if (bytes <= bytes_) return data_;
  MOEKIT_CHECK(be_ != nullptr, "Buffer::reserve(", bytes, "): no backend bound");
  reset();
  data_ = be_->allocate(bytes);
  bytes_ = bytes;
  return data_;
}

void* reserve_act(Buffer& b, int64_t n) {
  MOEKIT_CHECK(b.backend() != nullptr, "reserve_act(", n, "): no backend bound");
  return b.reserve(static_cast<size_t>(std::max<int64_t>(n, 1)) * dtype_size(b.backend()->compute_dtype()));
}

void Buffer::reset() {
  if (data_ && be_) be_->release(data_, bytes_);
  data_ = nullptr;
  bytes_ = 0;
}

#ifndef MOEKIT_WITH_CUDA
std::unique_ptr<Backend> make_cuda(int, DType) {
  MOEKIT_FAIL("this moekit was built without CUDA (MOEKIT_CUDA=OFF): no cuda backend");
}
#endif

}  // namespace moekit::backend
