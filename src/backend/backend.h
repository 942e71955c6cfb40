// Backend: the ops the model, the MoE layer, the token dispatcher, gradient sync, ZeRO-1 and the
// optimizer run on, written once over this interface (DESIGN.md section 9b). Two
// implementations hold the kernels:
//   cpu   (cpu_backend.cpp)  the *_cpu.cpp kernels: OpenBLAS/Eigen GEMMs, OpenMP loops. The
//                            tested reference and the fast path on CPUs. Activations are f32.
//   cuda  (cuda_backend.cu)  cuBLAS and moekit's CUDA kernels (*_cuda.cu) on one stream of one
//                            device. Activations are f32 or bf16 (GEMMs accumulate in f32).
// tests/gpu runs every op of the CUDA backend against the CPU backend on the same inputs
// (ggml's test-backend-ops idea); the whole-model tests on the CPU (transformers parity, finite
// differences, layout parity, resume) then cover the orchestration both share.
//
// Conventions (every op):
//  - Pointers are device memory of this backend (host memory for cpu). "act" buffers hold
//    compute_dtype() elements; buffers typed float/int are that type on every backend.
//    Statistics (RMSNorm's rstd, softmax sums, router probabilities, losses), parameters and
//    their gradients are f32 whatever the activation type.
//  - Ops are asynchronous and run in the order they were issued. upload() is ordered after the
//    ops before it and its host buffer may be reused as soon as it returns; download() and every
//    op that returns a host value wait for the work issued before them.
//  - Argument order: outputs, then inputs, then sizes (DESIGN.md section 10).
//  - Reductions over rows (weight, bias and statistics sums) add in a fixed order: results are
//    the same run to run.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/attention.h"

namespace moekit::optim {
struct AdamWScalars;  // optim/adamw_math.h
}

namespace moekit::backend {

// Row-major GEMM forms (kernels/matmul.h):
//   kNT  C[M,N] = alpha * A[M,K] B[N,K]^T + beta * C    (y = x W^T)
//   kNN  C[M,N] = alpha * A[M,K] B[K,N]   + beta * C    (dx = dy W)
//   kTN  C[M,N] = alpha * A[K,M]^T B[K,N] + beta * C    (dW = dy^T x)
enum class GemmOp { kNT, kNN, kTN };

struct Gemm {
  GemmOp op = GemmOp::kNT;
  int64_t m = 0, n = 0, k = 0;
  DType ab = DType::kF32;  // type of A and B
  DType c = DType::kF32;   // type of C
  float alpha = 1.f, beta = 0.f;
};

using kernels::AttnShape;

// How the router turns logits into expert scores (moe/router_math.h has the math).
enum class ScoreFunction { kSoftmax, kSigmoid };

struct RouterSpec {
  int64_t experts = 0, topk = 0;
  bool norm_topk = false;
  ScoreFunction score = ScoreFunction::kSoftmax;
};

// Where AdamW writes the rounded copy of an updated master (optim/optim.h, precision model).
enum class RoundCopy : uint8_t {
  kNone,        // the master is what the model computes with (fp32)
  kF32AsBf16,   // f32 array holding bf16-representable values (CPU mixed precision)
  kF32AsF16,    // f32 array holding f16-representable values (CPU fp16)
  kBf16,        // bf16 array (the GEMM copy of a bf16 device model)
};

// One tensor of an AdamW update: master p, moments m and v, gradient g (n f32 each), and the
// copy of p the model computes with.
struct AdamWTensor {
  float* p = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  const float* g = nullptr;
  void* copy = nullptr;
  int64_t n = 0;
  bool decay = false;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu", or "cuda:0 NVIDIA H100 80GB HBM3".
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  // Type of activations and of the weights the GEMMs read.
  virtual DType compute_dtype() const = 0;
  bool host_memory() const { return device() == Device::kCPU; }

  // ---- memory ----
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p, size_t bytes) = 0;
  virtual void upload(void* dst, const void* host, size_t bytes) = 0;
  virtual void download(void* host, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill_zero(void* p, size_t bytes) = 0;
  // Waits for every op issued so far (before handing buffers to another stream, e.g. NCCL).
  virtual void synchronize() = 0;
  // Bytes this backend's allocations hold now, and the most they ever held at once (what the
  // memory plan predicts; the device runtime's own memory is not counted).
  virtual int64_t allocated_bytes() const = 0;
  virtual int64_t peak_allocated_bytes() const = 0;
  // What the device reports in use (its runtime, libraries and other processes included), MiB;
  // 0 on the CPU.
  virtual double device_memory_used_mib() const { return 0.0; }
  // Dense peak FLOP/s of the device in the compute type (MFU's denominator), 0 when unknown
  // (the CPU measures its own: train/metrics.h).
  virtual double peak_flops() const { return 0.0; }

  // ---- linear algebra ----
  virtual void gemm(const Gemm& g, void* c, const void* a, const void* b) = 0;
  // y (rows, cols) += bias (cols)
  virtual void add_bias(void* y, const float* bias, int64_t rows, int64_t cols) = 0;
  // dbias (cols) += column sums of dy (rows, cols)
  virtual void bias_grad(float* dbias, const void* dy, int64_t rows, int64_t cols) = 0;

  // ---- elementwise and reductions ----
  // out (n) <- a + b (act; out may alias a or b)
  virtual void add(void* out, const void* a, const void* b, int64_t n) = 0;
  // act <-> f32 (round to nearest even; a copy when act is f32)
  virtual void to_f32(float* out, const void* in, int64_t n) = 0;
  virtual void from_f32(void* out, const float* in, int64_t n) = 0;
  // x (n) *= factor
  virtual void scale(float* x, float factor, int64_t n) = 0;
  // Sum of squares of x (n) in f64, in a fixed order (gradient norms). NaN/Inf propagate.
  virtual double sum_squares(const float* x, int64_t n) = 0;
  // Elements of x (n) that are NaN or +-Inf.
  virtual int64_t count_nonfinite(const float* x, int64_t n) = 0;
  // fp16 gradient storage: x (n) <- f16(x * s) / s; true when a rounded value is not finite.
  virtual bool round_through_f16(float* x, float s, int64_t n) = 0;

  // ---- layers ----
  // y (T, D), rstd (T) <- RMSNorm of x (T, D) with weight w (D)
  virtual void rmsnorm_forward(void* y, float* rstd, const void* x, const float* w, int64_t rows, int64_t dim,
                               float eps) = 0;
  // dx (T, D) overwritten (or accumulated), dw (D) accumulated
  virtual void rmsnorm_backward(void* dx, float* dw, const void* dy, const void* x, const float* w,
                                const float* rstd, int64_t rows, int64_t dim, bool accumulate) = 0;
  // In-place rotate-half RoPE of x (B*S, heads*d); cos/sin (S, d) tables; inverse: backward.
  virtual void rope(void* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
                    int64_t head_dim, bool inverse) = 0;
  // Causal GQA attention core. out (B*S, H*d) <- q (B*S, H*d), k, v (B*S, Hkv*d), rotated.
  // `saved` (attention_saved_floats(s) f32) keeps what the backward needs (the CPU keeps the
  // probabilities, CUDA one log-sum-exp per row).
  virtual int64_t attention_saved_floats(const AttnShape& s) const = 0;
  virtual void attention_forward(void* out, float* saved, const void* q, const void* k, const void* v,
                                 const AttnShape& s) = 0;
  // dq, dk, dv overwritten.
  virtual void attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* out,
                                  const float* saved, const void* q, const void* k, const void* v,
                                  const AttnShape& s) = 0;
  // act (rows, w) <- silu(gu[:, :w]) * gu[:, w:]; backward: dgu (rows, 2w) overwritten.
  virtual void swiglu_forward(void* act, const void* gu, int64_t rows, int64_t width) = 0;
  virtual void swiglu_backward(void* dgu, const void* dact, const void* gu, int64_t rows, int64_t width) = 0;
  // x (T, H) <- rows of table (V, H) for ids (T, in [0, V): checked by the caller).
  virtual void embedding_forward(void* x, const float* table, const int64_t* ids, int64_t tokens,
                                 int64_t hidden) = 0;
  // dtable (V, H) += dx rows scattered by ids
  virtual void embedding_backward(float* dtable, const void* dx, const int64_t* ids, int64_t tokens,
                                  int64_t hidden) = 0;
  // Sum over rows with targets >= 0 of logsumexp(logits) - logits[target] (f64, returned);
  // dlogits (may alias logits, may be null) <- grad_scale * (softmax - onehot), 0 for ignored rows.
  virtual double cross_entropy(void* dlogits, const void* logits, const int64_t* targets, int64_t rows,
                               int64_t vocab, float grad_scale) = 0;
  // Gated shared expert: gate (T) holds the gate logits and receives their sigmoid g;
  // y (T, H) += g * s (T, H). Backward: ds <- g dy; da (T, act) <- (dy . s) g (1 - g).
  virtual void sigmoid_gate_forward(void* y, float* gate, const void* s, int64_t tokens, int64_t hidden) = 0;
  virtual void sigmoid_gate_backward(void* ds, void* da, const void* dy, const void* s, const float* gate,
                                     int64_t tokens, int64_t hidden) = 0;

  // ---- MoE ----
  // scores (T, E), lse (T), idx (T, k), weights (T, k) <- logits (T, E) (f32); `bias` (E, may
  // be null) shifts the selection only (aux-loss-free balancing), never the weights.
  virtual void router_forward(float* scores, float* lse, int32_t* idx, float* weights, const float* logits,
                              const float* bias, const RouterSpec& r, int64_t tokens) = 0;
  // dlogits (T, E, act) <- from dweights (T, k), dscore (E, per-expert gradient on every
  // token's score, may be null) and the z-loss scale.
  virtual void router_backward(void* dlogits, const float* scores, const float* lse, const int32_t* idx,
                               const float* weights, const float* dweights, const float* dscore, float z_scale,
                               const RouterSpec& r, int64_t tokens) = 0;
  // score_sum (E) and sum of lse^2 over tokens, to the host in f64 (aux-loss statistics).
  virtual void router_stats(double* score_sum, double* lse_sq_sum, const float* scores, const float* lse,
                            int64_t tokens, int64_t experts) = 0;
  // Local dispatch plan (moe/dispatch.h): a stable counting sort of the (token, slot) pairs
  // idx (T*k) by expert. With capacity >= 0 an expert keeps its first `capacity` pairs in token
  // order and drops the rest. row_of (T*k) <- permuted row of each pair, -1 when dropped;
  // token_of (T*k, first R valid) <- the token of each row. Returns how many pairs chose each
  // expert (host, E entries, before dropping: expert e holds min(count, capacity) rows).
  virtual std::vector<int64_t> dispatch_plan(int32_t* row_of, int32_t* token_of, const int32_t* idx,
                                             int64_t tokens, int64_t topk, int64_t experts, int64_t capacity) = 0;
  // xp (rows, H) <- x[src[r]] (gather)
  virtual void gather_rows(void* xp, const void* x, const int32_t* src, int64_t rows, int64_t hidden) = 0;
  // out[dst[r]] (H) <- in[r] (scatter)
  virtual void scatter_rows(void* out, const void* in, const int32_t* dst, int64_t rows, int64_t hidden) = 0;
  // out (T, H) = beta * out + sum_j w[t, j] yp[row_of(t, j)] over kept slots, in slot order.
  virtual void combine_rows(void* out, float beta, const void* yp, const float* weights, const int32_t* row_of,
                            int64_t tokens, int64_t topk, int64_t hidden) = 0;
  // dyp[row_of(t, j)] <- w[t, j] dout[t]; dweights (T, k) <- dout[t] . yp[row_of(t, j)] (0 when dropped).
  virtual void combine_rows_backward(void* dyp, float* dweights, const void* dout, const void* yp,
                                     const float* weights, const int32_t* row_of, int64_t tokens, int64_t topk,
                                     int64_t hidden) = 0;
  // dx (T, H) = beta * dx + sum_j dxp[row_of(t, j)] over kept slots.
  virtual void dispatch_rows_backward(void* dx, float beta, const void* dxp, const int32_t* row_of,
                                      int64_t tokens, int64_t topk, int64_t hidden) = 0;
  // Routed experts over rows grouped by expert (counts: host, `num` entries): expert e's SwiGLU
  // MLP on its rows. stack: per expert [gate (I, H); up (I, H); down (H, I)] back to back
  // (compute dtype). gu (R, 2I), act (R, I) are kept for the backward.
  virtual void experts_forward(void* y, void* gu, void* act, const void* x, const void* stack, const int64_t* counts,
                               int64_t num, int64_t hidden, int64_t inter) = 0;
  // dx (R, H) overwritten; dstack (f32, the stack's layout) accumulated.
  virtual void experts_backward(void* dx, float* dstack, const void* dy, const void* x, const void* gu,
                                const void* act, const void* stack, const int64_t* counts, int64_t num,
                                int64_t hidden, int64_t inter) = 0;

  // ---- optimizer ----
  // One AdamW update of every tensor (optim/adamw_math.h per element), writing each updated
  // master rounded as `copy_kind` into its copy. A tensor with m == nullptr is not updated: only
  // its copy is refreshed from p (after a resume). Returns the number of elements whose master
  // (or, when updated, second moment) is not finite after the pass (the caller's NaN policy decides).
  virtual int64_t adamw(const std::vector<AdamWTensor>& tensors, RoundCopy copy_kind,
                        const optim::AdamWScalars& base, const optim::AdamWScalars& decayed) = 0;
};

// The process-wide CPU backend.
Backend& cpu();
// A CUDA backend on `device` with activations of `act` (kF32 or kBF16). Errors name what is
// missing in a build without CUDA or on a machine without that device.
std::unique_ptr<Backend> make_cuda(int device, DType act);

// Owning, grow-only device memory of one backend (activations, scratch, arenas).
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(Backend& be, size_t bytes = 0) : be_(&be) { reserve(bytes); }
  ~Buffer() { reset(); }
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  // At least `bytes` (contents are not kept when it grows). Returns data().
  void* reserve(size_t bytes);
  void reset();
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  Backend* backend() const { return be_; }

 private:
  Backend* be_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Scratch of n elements (at least one, so that the pointer is valid for empty work): of type T,
// or of the activation type of the buffer's backend.
template <typename T>
T* reserve_n(Buffer& b, int64_t n) {
  return static_cast<T*>(b.reserve(sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 1))));
}
void* reserve_act(Buffer& b, int64_t n);

// n elements of type T from a device buffer to a new host vector (a copy on the CPU backend).
template <typename T>
std::vector<T> to_host(Backend& be, const T* src, int64_t n) {
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0) be.download(out.data(), src, static_cast<size_t>(n) * sizeof(T));
  return out;
}

}  // namespace moekit::backend
