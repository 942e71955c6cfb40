// GpuModel (gpu_model.h): the CPU model's forward and backward (model.cpp, attention_layer.cpp,
// mlp.cpp, moe_layer.cpp) op for op on the device, templated on the activation type.
#include "model/gpu_model.h"

#include <cmath>
#include <cstdlib>
#include <map>
#include <type_traits>

#include "kernels/attention_cuda.h"
#include "kernels/cuda_types.cuh"
#include "kernels/gemm_cuda.h"
#include "kernels/kernels_cuda.h"
#include "kernels/rope.h"
#include "moe/aux_loss.h"
#include "moe/moe_cuda.h"
#include "moe/token_dispatcher.h"

namespace moekit::model {

using cuda::bf16;
using cuda::DeviceArray;
using kernels::act_dtype;
using kernels::GemmOp;

struct GpuModel::Impl {
  virtual ~Impl() = default;
  virtual const config::ModelConfig& config() const = 0;
  virtual GpuPrecision precision() const = 0;
  virtual void upload_weights(const ParamStore& host) = 0;
  virtual void download(ParamStore* host, bool grads) const = 0;
  virtual float* weights(bool expert) = 0;
  virtual float* grads(bool expert) = 0;
  virtual int64_t numel(bool expert) const = 0;
  virtual bf16* compute_weights(bool expert) = 0;
  virtual void refresh_compute_weights() = 0;
  virtual void zero_grad() = 0;
  virtual LossTerms forward(const int64_t* in, const int64_t* tg, int64_t B, int64_t S, const LossConfig& loss,
                            bool train) = 0;
  virtual void backward() = 0;
  virtual std::vector<float> logits() const = 0;
  virtual const std::vector<std::vector<int64_t>>& expert_counts() const = 0;
};

namespace {

// A parameter's place in the arenas; off < 0: absent (an optional bias or gate).
struct PRef {
  bool expert = false;
  int64_t off = -1;
  explicit operator bool() const { return off >= 0; }
};

// MOEKIT_CUDA_ATTENTION=plain selects the plain attention kernels (the reference); the default
// is the cuBLAS GEMM path (kernels/attention_cuda.h).
kernels::AttnImpl attention_impl_from_env() {
  const char* v = std::getenv("MOEKIT_CUDA_ATTENTION");
  if (!v || !*v || std::string(v) == "gemm") return kernels::AttnImpl::kGemm;
  MOEKIT_CHECK(std::string(v) == "plain", "MOEKIT_CUDA_ATTENTION='", v, "' must be gemm or plain");
  return kernels::AttnImpl::kPlain;
}


// Grow-only device array: activations keep their storage across steps of equal shapes.
template <typename U>
U* ensure(DeviceArray<U>* a, int64_t n) {
  if (static_cast<int64_t>(a->size()) < n) a->resize(static_cast<size_t>(n));
  return a->data();
}

template <typename T>
class ImplT final : public GpuModel::Impl {
 public:
  ImplT(const config::ModelConfig& cfg, const ParamStore& layout, cuda::Context& ctx, GpuParallel ep)
      : cfg_(cfg), ctx_(ctx), ep_(ep), specs_(layout.specs()) {
    cfg_.validate();
    if (ep_.active()) {
      const int P = ep_.counts->size();
      MOEKIT_CHECK(ep_.rows && ep_.rows->size() == P && ep_.rows->rank() == ep_.counts->rank(),
                   "GpuModel: the device expert-parallel group must mirror the host one (", P, " ranks)");
      MOEKIT_CHECK(cfg_.num_experts % P == 0, "GpuModel: num_experts ", cfg_.num_experts,
                   " is not divisible by the expert-parallel size ", P);
      local_experts_ = cfg_.num_experts / P;
      first_expert_ = ep_.counts->rank() * local_experts_;
    } else {
      local_experts_ = cfg_.num_experts;
    }
    for (size_t i = 0; i < specs_.size(); ++i) index_[specs_[i].name] = i;
    for (int e = 0; e < 2; ++e) {
      numel_[e] = layout.numel(e);
      master_[e] = DeviceArray<float>(static_cast<size_t>(numel_[e]));
      grads_[e] = DeviceArray<float>(static_cast<size_t>(numel_[e]));
      if constexpr (!std::is_same_v<T, float>) compute_[e] = DeviceArray<bf16>(static_cast<size_t>(numel_[e]));
    }
    MOEKIT_CHECK(!cfg_.is_moe() || layout.numel(true) == expected_expert_numel(), "GpuModel: the layout holds ",
                 layout.numel(true), " expert parameters, the config needs ", expected_expert_numel(),
                 " (", local_experts_, " local experts per MoE layer)");
    bind();
    zero_grad();
  }

  const config::ModelConfig& config() const override { return cfg_; }
  GpuPrecision precision() const override {
    return std::is_same_v<T, float> ? GpuPrecision::kF32 : GpuPrecision::kBf16;
  }

  void upload_weights(const ParamStore& host) override {
    for (int e = 0; e < 2; ++e) {
      MOEKIT_CHECK(host.numel(e) == numel_[e], "GpuModel::upload_weights: host arena ", e, " has ", host.numel(e),
                   " elements, the device one ", numel_[e]);
      master_[e].upload(host.values(e), static_cast<size_t>(numel_[e]));
    }
    refresh_compute_weights();
  }

  void download(ParamStore* host, bool grads) const override {
    for (int e = 0; e < 2; ++e) {
      if (numel_[e] == 0) continue;
      const DeviceArray<float>& src = grads ? grads_[e] : master_[e];
      float* dst = grads ? host->grads(e) : host->values(e);
      MOEKIT_CUDA_CHECK(cudaMemcpy(dst, src.data(), numel_[e] * sizeof(float), cudaMemcpyDeviceToHost));
    }
  }

  float* weights(bool e) override { return master_[e].data(); }
  float* grads(bool e) override { return grads_[e].data(); }
  int64_t numel(bool e) const override { return numel_[e]; }
  bf16* compute_weights(bool e) override {
    if constexpr (std::is_same_v<T, float>) return nullptr;
    else return compute_[e].data();
  }

  void refresh_compute_weights() override {
    if constexpr (!std::is_same_v<T, float>)
      for (int e = 0; e < 2; ++e) kernels::f32_to_bf16_cuda(ctx_, compute_[e].data(), master_[e].data(), numel_[e]);
  }

  void zero_grad() override {
    for (int e = 0; e < 2; ++e)
      if (numel_[e] > 0)
        MOEKIT_CUDA_CHECK(cudaMemsetAsync(grads_[e].data(), 0, numel_[e] * sizeof(float), ctx_.stream()));
  }

  LossTerms forward(const int64_t* in, const int64_t* tg, int64_t B, int64_t S, const LossConfig& loss,
                    bool train) override;
  void backward() override;

  std::vector<float> logits() const override {
    MOEKIT_CHECK(have_logits_, "GpuModel::logits: the last forward was a training forward (its logits were "
                               "overwritten by their gradient) or there was none");
    const int64_t n = B_ * S_ * cfg_.vocab_size;
    std::vector<float> out(static_cast<size_t>(n));
    if constexpr (std::is_same_v<T, float>) {
      MOEKIT_CUDA_CHECK(cudaMemcpy(out.data(), logits_.data(), n * sizeof(float), cudaMemcpyDeviceToHost));
    } else {
      DeviceArray<float> tmp(static_cast<size_t>(n));
      kernels::bf16_to_f32_cuda(ctx_, tmp.data(), logits_.data(), n);
      ctx_.synchronize();
      out = tmp.download();
    }
    return out;
  }

  const std::vector<std::vector<int64_t>>& expert_counts() const override { return counts_; }

 private:
  struct Layer {
    size_t index = 0;  // layer number: counts_[index] holds its rows per expert
    bool sparse = false;
    int moe_index = -1;
    PRef ln1, ln2, wq, bq, wk, bk, wv, bv, wo;
    PRef gate_up, down;                                     // dense MLP
    PRef router, experts, s_gate_up, s_down, s_gate_w;      // MoE
    // Activations of the last forward.
    DeviceArray<T> xn1, q, k, v, ctx, h, xn2;
    DeviceArray<float> rstd1, rstd2, lse;
    DeviceArray<T> gu, act;                                 // dense MLP (T, 2I), (T, I)
    DeviceArray<float> r_logits, probs, r_lse, weights;     // router (T, E), (T, E), (T), (T, k)
    DeviceArray<int32_t> idx, counts, offsets, row_of, token_of;
    DeviceArray<T> xp, e_gu, e_act, yp;                     // dispatched rows (T*k, .); e_*: expert rows
    moe::DispatchHandle handle;                             // expert parallelism: the exchange plan
    DeviceArray<int32_t> grouped_row;                       // (R_in) received row -> grouped row
    DeviceArray<T> xg;                                      // (R_in, H) received rows grouped by expert
    DeviceArray<T> s_gu, s_act, s_out;                      // shared expert
    DeviceArray<float> s_gate;                              // (T) sigmoid of the gate logit
    DeviceArray<float> prob_sum, dprob;                     // (E)
    DeviceArray<double> lse_sq;                             // (1)
    float z_scale = 0.f;
    bool have_dprob = false;
  };

  int64_t expected_expert_numel() const {
    int64_t n = 0;
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
      if (cfg_.is_sparse_layer(l)) n += local_experts_ * 3 * cfg_.moe_intermediate_size * cfg_.hidden_size;
    return n;
  }

  PRef ref(const std::string& name) const {
    const auto it = index_.find(name);
    MOEKIT_CHECK(it != index_.end(), "GpuModel: the layout has no parameter '", name, "'");
    return {specs_[it->second].expert, specs_[it->second].offset};
  }
  PRef opt(const std::string& name) const { return index_.count(name) ? ref(name) : PRef{}; }

  void bind() {
    embed_ = ref("model.embed_tokens.weight");
    final_norm_ = ref("model.norm.weight");
    lm_head_ = cfg_.tie_word_embeddings ? embed_ : ref("lm_head.weight");
    int moe = 0;
    layers_.resize(static_cast<size_t>(cfg_.num_hidden_layers));
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
      Layer& L = layers_[l];
      L.index = static_cast<size_t>(l);
      const std::string p = "model.layers." + std::to_string(l) + ".";
      L.ln1 = ref(p + "input_layernorm.weight");
      L.ln2 = ref(p + "post_attention_layernorm.weight");
      L.wq = ref(p + "self_attn.q_proj.weight");
      L.bq = opt(p + "self_attn.q_proj.bias");
      L.wk = ref(p + "self_attn.k_proj.weight");
      L.bk = opt(p + "self_attn.k_proj.bias");
      L.wv = ref(p + "self_attn.v_proj.weight");
      L.bv = opt(p + "self_attn.v_proj.bias");
      L.wo = ref(p + "self_attn.o_proj.weight");
      L.sparse = cfg_.is_sparse_layer(l);
      if (!L.sparse) {
        L.gate_up = ref(p + "mlp.gate_proj.weight");  // gate then up: one (2I, H) block
        L.down = ref(p + "mlp.down_proj.weight");
        continue;
      }
      L.moe_index = moe++;
      L.router = ref(p + "mlp.gate.weight");
      // The stack of this rank's experts: [gate; up; down] per expert, back to back.
      L.experts = ref(p + "mlp.experts." + std::to_string(first_expert_) + ".gate_proj.weight");
      if (cfg_.shared_expert_intermediate_size > 0) {
        L.s_gate_up = ref(p + "mlp.shared_expert.gate_proj.weight");
        L.s_down = ref(p + "mlp.shared_expert.down_proj.weight");
        L.s_gate_w = opt(p + "mlp.shared_expert_gate.weight");
      }
    }
    counts_.assign(layers_.size(), {});
  }

  // Parameter pointers: f32 master, f32 gradient, and what the GEMMs read (bf16 copy or master).
  const float* w32(PRef p) const { return master_[p.expert].data() + p.off; }
  float* g32(PRef p) { return grads_[p.expert].data() + p.off; }
  const T* wT(PRef p) const {
    if constexpr (std::is_same_v<T, float>) return master_[p.expert].data() + p.off;
    else return compute_[p.expert].data() + p.off;
  }

  void gemm(GemmOp op, int64_t m, int64_t n, int64_t k, void* c, DType ct, const void* a, const void* b, float beta) {
    kernels::GemmArgs g;
    g.op = op;
    g.m = m;
    g.n = n;
    g.k = k;
    g.ab = act_dtype<T>();
    g.c = ct;
    g.beta = beta;
    kernels::gemm_cuda(ctx_, g, c, a, b);
  }
  // y (rows, n) = x (rows, k) W^T (+ b)
  void linear(T* y, const T* x, PRef w, PRef b, int64_t rows, int64_t n, int64_t k) {
    gemm(GemmOp::kNT, rows, n, k, y, act_dtype<T>(), x, wT(w), 0.f);
    if (b) kernels::add_bias_cuda<T>(ctx_, y, w32(b), rows, n);
  }
  // dW += dy^T x ; db += sum_t dy ; dx = beta dx + dy W
  void linear_backward(T* dx, float beta, PRef w, PRef b, const T* dy, const T* x, int64_t rows, int64_t n,
                       int64_t k) {
    gemm(GemmOp::kTN, n, k, rows, g32(w), DType::kF32, dy, x, 1.f);
    if (b) kernels::bias_grad_cuda<T>(ctx_, g32(b), dy, rows, n);
    gemm(GemmOp::kNN, rows, k, n, dx, act_dtype<T>(), dy, wT(w), beta);
  }
  // SwiGLU MLP: y = beta y + down(silu(gate x) * up x); keeps gu (rows, 2I) and act (rows, I).
  void mlp_forward(T* y, float beta, T* gu, T* act, const T* x, PRef gate_up, PRef down, int64_t rows, int64_t I) {
    const int64_t H = cfg_.hidden_size;
    gemm(GemmOp::kNT, rows, 2 * I, H, gu, act_dtype<T>(), x, wT(gate_up), 0.f);
    kernels::swiglu_forward_cuda<T>(ctx_, act, gu, rows, I);
    gemm(GemmOp::kNT, rows, H, I, y, act_dtype<T>(), act, wT(down), beta);
  }
  void mlp_backward(T* dx, float beta, PRef gate_up, PRef down, const T* dy, const T* x, const T* gu, const T* act,
                    int64_t rows, int64_t I) {
    const int64_t H = cfg_.hidden_size;
    T* dact = ensure(&scratch_a_, rows * I);
    T* dgu = ensure(&scratch_b_, rows * 2 * I);
    gemm(GemmOp::kNN, rows, I, H, dact, act_dtype<T>(), dy, wT(down), 0.f);  // dact = dy W_down
    gemm(GemmOp::kTN, H, I, rows, g32(down), DType::kF32, dy, act, 1.f);     // dW_down += dy^T act
    kernels::swiglu_backward_cuda<T>(ctx_, dgu, dact, gu, rows, I);
    gemm(GemmOp::kTN, 2 * I, H, rows, g32(gate_up), DType::kF32, dgu, x, 1.f);  // dW_gu += dgu^T x
    gemm(GemmOp::kNN, rows, H, 2 * I, dx, act_dtype<T>(), dgu, wT(gate_up), beta);
  }

  void attention_forward(Layer& L, T* y, int64_t B, int64_t S);
  void attention_backward(Layer& L, T* dx, const T* dy, int64_t B, int64_t S);
  void moe_forward(Layer& L, T* y, int64_t tokens);
  void moe_backward(Layer& L, T* dx, const T* dy, int64_t tokens);
  void experts_forward(Layer& L, const int64_t* counts, const T* x, int64_t rows, T* y);
  void experts_backward(Layer& L, const int64_t* counts, const T* dy, const T* x, int64_t rows, T* dx);
  // The rows of a dispatch handle, to the experts' owners or back to their sources (NCCL).
  void exchange(T* dst, const T* src, const moe::DispatchHandle& h, bool to_experts) {
    const int64_t* sc = to_experts ? h.send_rows.data() : h.recv_rows.data();
    const int64_t* sd = to_experts ? h.send_offsets.data() : h.recv_offsets.data();
    const int64_t* rc = to_experts ? h.recv_rows.data() : h.send_rows.data();
    const int64_t* rd = to_experts ? h.recv_offsets.data() : h.send_offsets.data();
    ctx_.synchronize();  // the NCCL communicator works on its own stream: hand it finished rows
    ep_.rows->all_to_all_v(dst, rc, rd, src, sc, sd, cfg_.hidden_size * static_cast<int64_t>(sizeof(T)),
                           parallel::DataType::kU8);
  }

  config::ModelConfig cfg_;
  cuda::Context& ctx_;
  GpuParallel ep_;
  int64_t local_experts_ = 0, first_expert_ = 0;
  std::vector<ParamSpec> specs_;
  std::map<std::string, size_t> index_;
  int64_t numel_[2] = {0, 0};
  DeviceArray<float> master_[2], grads_[2];
  DeviceArray<bf16> compute_[2];
  PRef embed_, final_norm_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<std::vector<int64_t>> counts_;
  kernels::GroupedGemm grouped_;
  kernels::AttnImpl attn_impl_ = attention_impl_from_env();
  kernels::AttnWorkspace attn_ws_;
  // Inputs and activations of the last forward.
  int64_t B_ = 0, S_ = 0, rope_len_ = 0;
  bool have_cache_ = false, have_logits_ = false;
  DeviceArray<int64_t> ids_, targets_;
  DeviceArray<float> rope_cos_, rope_sin_;
  std::vector<DeviceArray<T>> resid_;  // (L + 1) residual streams (T, H): layer l reads resid_[l]
  DeviceArray<T> xn_final_, logits_;
  DeviceArray<float> rstd_final_, loss_rows_, x32_;
  DeviceArray<double> loss_sum_;
  // Scratch: reused within one op sequence, never across forward/backward.
  DeviceArray<T> scratch_a_, scratch_b_, scratch_c_, scratch_d_, dq_, dk_, dv_;
  DeviceArray<T> dx_, dh_, dmlp_, ep_a_, ep_b_;
  DeviceArray<float> delta_, dweights_;
};

template <typename T>
void ImplT<T>::attention_forward(Layer& L, T* y, int64_t B, int64_t S) {
  const int64_t T_ = B * S, H = cfg_.hidden_size, d = cfg_.head_size();
  const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, qd = nh * d, kvd = nkv * d;
  T* q = ensure(&L.q, T_ * qd);
  T* k = ensure(&L.k, T_ * kvd);
  T* v = ensure(&L.v, T_ * kvd);
  T* c = ensure(&L.ctx, T_ * qd);
  float* lse = ensure(&L.lse, B * nh * S);
  linear(q, L.xn1.data(), L.wq, L.bq, T_, qd, H);
  linear(k, L.xn1.data(), L.wk, L.bk, T_, kvd, H);
  linear(v, L.xn1.data(), L.wv, L.bv, T_, kvd, H);
  kernels::rope_apply_cuda<T>(ctx_, q, rope_cos_.data(), rope_sin_.data(), B, S, nh, d, false);
  kernels::rope_apply_cuda<T>(ctx_, k, rope_cos_.data(), rope_sin_.data(), B, S, nkv, d, false);
  kernels::attention_forward_cuda<T>(ctx_, c, lse, q, k, v, {B, S, nh, nkv, d}, attn_impl_, &attn_ws_);
  gemm(GemmOp::kNT, T_, H, qd, y, act_dtype<T>(), c, wT(L.wo), 0.f);
}

template <typename T>
void ImplT<T>::attention_backward(Layer& L, T* dx, const T* dy, int64_t B, int64_t S) {
  const int64_t T_ = B * S, H = cfg_.hidden_size, d = cfg_.head_size();
  const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, qd = nh * d, kvd = nkv * d;
  T* dctx = ensure(&scratch_c_, T_ * qd);
  T* dq = ensure(&dq_, T_ * qd);
  T* dk = ensure(&dk_, T_ * kvd);
  T* dv = ensure(&dv_, T_ * kvd);
  gemm(GemmOp::kTN, H, qd, T_, g32(L.wo), DType::kF32, dy, L.ctx.data(), 1.f);  // dWo += dy^T ctx
  gemm(GemmOp::kNN, T_, qd, H, dctx, act_dtype<T>(), dy, wT(L.wo), 0.f);        // dctx = dy Wo
  kernels::attention_backward_cuda<T>(ctx_, dq, dk, dv, ensure(&delta_, B * nh * S), dctx, L.ctx.data(),
                                      L.lse.data(), L.q.data(), L.k.data(), L.v.data(), {B, S, nh, nkv, d}, attn_impl_,
                                      &attn_ws_);
  kernels::rope_apply_cuda<T>(ctx_, dq, rope_cos_.data(), rope_sin_.data(), B, S, nh, d, true);
  kernels::rope_apply_cuda<T>(ctx_, dk, rope_cos_.data(), rope_sin_.data(), B, S, nkv, d, true);
  linear_backward(dx, 0.f, L.wq, L.bq, dq, L.xn1.data(), T_, qd, H);
  linear_backward(dx, 1.f, L.wk, L.bk, dk, L.xn1.data(), T_, kvd, H);
  linear_backward(dx, 1.f, L.wv, L.bv, dv, L.xn1.data(), T_, kvd, H);
}

template <typename T>
void ImplT<T>::moe_forward(Layer& L, T* y, int64_t N) {
  const int64_t H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.num_experts_per_tok;
  const int64_t Is = cfg_.shared_expert_intermediate_size, R = N * k;
  // Router in f32 (DESIGN.md section 5): the normalised input widened, the f32 master weights.
  const float* x32 = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    x32 = L.xn2.data();
  } else {
    kernels::bf16_to_f32_cuda(ctx_, ensure(&x32_, N * H), L.xn2.data(), N * H);
    x32 = x32_.data();
  }
  kernels::GemmArgs g{GemmOp::kNT, N, E, H, DType::kF32, DType::kF32};
  kernels::gemm_cuda(ctx_, g, ensure(&L.r_logits, N * E), x32, w32(L.router));
  moe::router_forward_cuda(ctx_, ensure(&L.probs, N * E), ensure(&L.r_lse, N), ensure(&L.idx, R),
                           ensure(&L.weights, R), L.r_logits.data(), N, E, k, cfg_.norm_topk_prob);
  moe::dispatch_plan_cuda(ctx_, ensure(&L.counts, E), ensure(&L.offsets, E + 1), ensure(&L.row_of, R),
                          ensure(&L.token_of, R), L.idx.data(), N, k, E);
  // The grouped GEMM needs the rows per expert on the host: one small copy per layer.
  std::vector<int32_t> c32(static_cast<size_t>(E));
  MOEKIT_CUDA_CHECK(cudaMemcpyAsync(c32.data(), L.counts.data(), E * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                    ctx_.stream()));
  ctx_.synchronize();
  std::vector<int64_t>& counts = counts_[L.index];
  counts.assign(c32.begin(), c32.end());
  T* xp = ensure(&L.xp, R * H);
  T* yp = ensure(&L.yp, R * H);
  moe::dispatch_rows_cuda<T>(ctx_, xp, L.xn2.data(), L.token_of.data(), R, H);
  if (!ep_.active()) {
    experts_forward(L, counts.data(), xp, R, yp);
  } else {
    // The dispatcher's six phases (moe/token_dispatcher.h) with the rows on the device.
    moe::DispatchHandle& h = L.handle;
    h.plan = moe::DispatchPlan{};
    h.plan.tokens = N;
    h.plan.topk = k;
    h.plan.experts = E;
    h.plan.counts = counts;
    h.plan.offsets.assign(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) h.plan.offsets[e + 1] = h.plan.offsets[e] + h.plan.counts[e];
    moe::plan_sends(&h, ep_.counts->size());
    moe::exchange_counts(&h, *ep_.counts);
    const int64_t Rin = h.received_rows();
    DeviceArray<int32_t>& gr = L.grouped_row;
    ensure(&gr, std::max<int64_t>(Rin, 1));
    gr.upload(h.grouped_row.data(), static_cast<size_t>(Rin));
    T* recv = ensure(&ep_a_, std::max<int64_t>(Rin, 1) * H);
    exchange(recv, xp, h, /*to_experts=*/true);
    T* xg = ensure(&L.xg, std::max<int64_t>(Rin, 1) * H);
    moe::scatter_rows_cuda<T>(ctx_, xg, recv, gr.data(), Rin, H);
    T* yg = ensure(&ep_b_, std::max<int64_t>(Rin, 1) * H);
    experts_forward(L, h.expert_layout.counts.data(), xg, Rin, yg);
    moe::dispatch_rows_cuda<T>(ctx_, recv, yg, gr.data(), Rin, H);  // back to received order
    exchange(yp, recv, h, /*to_experts=*/false);
  }
  moe::combine_rows_cuda<T>(ctx_, y, 0.f, yp, L.weights.data(), L.row_of.data(), N, k, H);
  if (Is > 0) {
    T* s_gu = ensure(&L.s_gu, N * 2 * Is);
    T* s_act = ensure(&L.s_act, N * Is);
    if (!L.s_gate_w) {  // ungated (DeepSeekMoE): y += shared(x)
      mlp_forward(y, 1.f, s_gu, s_act, L.xn2.data(), L.s_gate_up, L.s_down, N, Is);
    } else {
      T* s_out = ensure(&L.s_out, N * H);
      mlp_forward(s_out, 0.f, s_gu, s_act, L.xn2.data(), L.s_gate_up, L.s_down, N, Is);
      gemm(GemmOp::kNT, N, 1, H, ensure(&L.s_gate, N), DType::kF32, L.xn2.data(), wT(L.s_gate_w), 0.f);
      kernels::sigmoid_gate_forward_cuda<T>(ctx_, y, L.s_gate.data(), s_out, N, H);
    }
  }
  // Aux-loss statistics: probability sums per expert and the sum of lse^2 (counts are on the host).
  float* ps = ensure(&L.prob_sum, E);
  MOEKIT_CUDA_CHECK(cudaMemsetAsync(ps, 0, E * sizeof(float), ctx_.stream()));
  kernels::bias_grad_cuda<float>(ctx_, ps, L.probs.data(), N, E);
  kernels::sum_squares_cuda(ctx_, ensure(&L.lse_sq, 1), L.r_lse.data(), N);
}

template <typename T>
void ImplT<T>::experts_forward(Layer& L, const int64_t* counts, const T* x, int64_t rows, T* y) {
  // Each local expert e over its rows: [gate; up] then down, one grouped GEMM each.
  const int64_t H = cfg_.hidden_size, I = cfg_.moe_intermediate_size, stride = 3 * I * H;
  T* e_gu = ensure(&L.e_gu, std::max<int64_t>(rows, 1) * 2 * I);
  T* e_act = ensure(&L.e_act, std::max<int64_t>(rows, 1) * I);
  kernels::grouped_gemm_cuda(ctx_, &grouped_, GemmOp::kNT, act_dtype<T>(), counts, local_experts_, 2 * I, H, e_gu, x,
                             wT(L.experts), stride);
  kernels::swiglu_forward_cuda<T>(ctx_, e_act, e_gu, rows, I);
  kernels::grouped_gemm_cuda(ctx_, &grouped_, GemmOp::kNT, act_dtype<T>(), counts, local_experts_, H, I, y, e_act,
                             wT(L.experts) + 2 * I * H, stride);
}

template <typename T>
void ImplT<T>::experts_backward(Layer& L, const int64_t* counts, const T* dy, const T* x, int64_t rows, T* dx) {
  const int64_t H = cfg_.hidden_size, I = cfg_.moe_intermediate_size, stride = 3 * I * H, n = local_experts_;
  T* dact = ensure(&scratch_a_, std::max<int64_t>(rows, 1) * I);
  T* dgu = ensure(&scratch_b_, std::max<int64_t>(rows, 1) * 2 * I);
  kernels::grouped_gemm_cuda(ctx_, &grouped_, GemmOp::kNN, act_dtype<T>(), counts, n, I, H, dact, dy,
                             wT(L.experts) + 2 * I * H, stride);  // dact = dy W_down
  kernels::grouped_weight_grad_cuda(ctx_, act_dtype<T>(), counts, n, H, I, g32(L.experts) + 2 * I * H, stride, dy,
                                    L.e_act.data());  // dW_down += dy^T act
  kernels::swiglu_backward_cuda<T>(ctx_, dgu, dact, L.e_gu.data(), rows, I);
  kernels::grouped_weight_grad_cuda(ctx_, act_dtype<T>(), counts, n, 2 * I, H, g32(L.experts), stride, dgu,
                                    x);  // dW_gu += dgu^T x
  kernels::grouped_gemm_cuda(ctx_, &grouped_, GemmOp::kNN, act_dtype<T>(), counts, n, H, 2 * I, dx, dgu,
                             wT(L.experts), stride);  // dx = dgu W_gu
}

template <typename T>
void ImplT<T>::moe_backward(Layer& L, T* dx, const T* dy, int64_t N) {
  const int64_t H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.num_experts_per_tok;
  const int64_t Is = cfg_.shared_expert_intermediate_size, R = N * k;
  T* dyp = ensure(&scratch_c_, R * H);
  float* dw = ensure(&dweights_, R);
  moe::combine_rows_backward_cuda<T>(ctx_, dyp, dw, dy, L.yp.data(), L.weights.data(), L.row_of.data(), N, k, H);
  T* dxp = ensure(&scratch_d_, R * H);
  if (!ep_.active()) {
    experts_backward(L, counts_[L.index].data(), dyp, L.xp.data(), R, dxp);
  } else {
    // The forward's exchanges in reverse with the same handle (moe/token_dispatcher.h).
    const moe::DispatchHandle& h = L.handle;
    const int64_t Rin = std::max<int64_t>(h.received_rows(), 1);
    T* drecv = ensure(&ep_a_, Rin * H);
    exchange(drecv, dyp, h, /*to_experts=*/true);
    T* dyg = ensure(&ep_b_, Rin * H);
    moe::scatter_rows_cuda<T>(ctx_, dyg, drecv, L.grouped_row.data(), h.received_rows(), H);
    experts_backward(L, h.expert_layout.counts.data(), dyg, L.xg.data(), h.received_rows(), drecv);  // dxg
    moe::dispatch_rows_cuda<T>(ctx_, dyg, drecv, L.grouped_row.data(), h.received_rows(), H);  // received order
    exchange(dxp, dyg, h, /*to_experts=*/false);
  }
  moe::dispatch_rows_backward_cuda<T>(ctx_, dx, 0.f, dxp, L.row_of.data(), N, k, H);
  // Router: d logits from the combine weights, the load-balancing term and the z-loss.
  T* dlog = ensure(&scratch_a_, N * E);
  moe::router_backward_cuda<T>(ctx_, dlog, L.probs.data(), L.r_lse.data(), L.idx.data(), L.weights.data(), dw,
                               L.have_dprob ? L.dprob.data() : nullptr, L.z_scale, N, E, k, cfg_.norm_topk_prob);
  gemm(GemmOp::kTN, E, H, N, g32(L.router), DType::kF32, dlog, L.xn2.data(), 1.f);  // dW_r += dz^T x
  gemm(GemmOp::kNN, N, H, E, dx, act_dtype<T>(), dlog, wT(L.router), 1.f);          // dx += dz W_r
  if (Is == 0) return;
  const T* dys = dy;
  if (L.s_gate_w) {  // y += g s: ds = g dy, d(gate logit) = (dy . s) g (1 - g)
    T* ds = ensure(&scratch_c_, N * H);
    T* da = ensure(&scratch_d_, N);
    kernels::sigmoid_gate_backward_cuda<T>(ctx_, ds, da, dy, L.s_out.data(), L.s_gate.data(), N, H);
    gemm(GemmOp::kTN, 1, H, N, g32(L.s_gate_w), DType::kF32, da, L.xn2.data(), 1.f);
    gemm(GemmOp::kNN, N, H, 1, dx, act_dtype<T>(), da, wT(L.s_gate_w), 1.f);
    dys = ds;
  }
  mlp_backward(dx, 1.f, L.s_gate_up, L.s_down, dys, L.xn2.data(), L.s_gu.data(), L.s_act.data(), N, Is);
}

template <typename T>
LossTerms ImplT<T>::forward(const int64_t* in, const int64_t* tg, int64_t B, int64_t S, const LossConfig& loss,
                            bool train) {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, N = B * S;
  MOEKIT_CHECK(B > 0 && S > 0, "forward: empty batch (batch ", B, ", seq ", S, ")");
  LossTerms out;
  for (int64_t t = 0; t < N; ++t) {
    MOEKIT_CHECK(in[t] >= 0 && in[t] < V, "token id ", in[t], " at position ", t, " is out of range for vocab_size ",
                 V);
    MOEKIT_CHECK(tg[t] < V, "target id ", tg[t], " at position ", t, " is out of range for vocab_size ", V);
    out.targets += tg[t] >= 0;
  }
  B_ = B;
  S_ = S;
  ensure(&ids_, N);
  ensure(&targets_, N);
  ids_.upload(in, static_cast<size_t>(N));
  targets_.upload(tg, static_cast<size_t>(N));
  if (rope_len_ != S) {
    std::vector<float> cos, sin;
    kernels::rope_tables(&cos, &sin, S, cfg_.head_size(), cfg_.rope_theta);
    rope_cos_ = DeviceArray<float>(cos);
    rope_sin_ = DeviceArray<float>(sin);
    rope_len_ = S;
  }
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  resid_.resize(layers_.size() + 1);
  kernels::embedding_forward_cuda<T>(ctx_, ensure(&resid_[0], N * H), w32(embed_), ids_.data(), N, H);
  T* attn_out = ensure(&scratch_a_, N * H);
  T* mlp_out = ensure(&scratch_b_, N * H);
  std::vector<moe::RouterStats> stats;
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = layers_[l];
    const T* x = resid_[l].data();
    kernels::rmsnorm_forward_cuda<T>(ctx_, ensure(&L.xn1, N * H), ensure(&L.rstd1, N), x, w32(L.ln1), N, H, eps);
    attention_forward(L, attn_out, B, S);
    kernels::add_cuda<T>(ctx_, ensure(&L.h, N * H), x, attn_out, N * H);
    kernels::rmsnorm_forward_cuda<T>(ctx_, ensure(&L.xn2, N * H), ensure(&L.rstd2, N), L.h.data(), w32(L.ln2), N, H,
                                     eps);
    if (L.sparse) {
      moe_forward(L, mlp_out, N);
    } else {
      const int64_t I = cfg_.intermediate_size;
      mlp_forward(mlp_out, 0.f, ensure(&L.gu, N * 2 * I), ensure(&L.act, N * I), L.xn2.data(), L.gate_up, L.down, N,
                  I);
    }
    kernels::add_cuda<T>(ctx_, ensure(&resid_[l + 1], N * H), L.h.data(), mlp_out, N * H);
  }
  kernels::rmsnorm_forward_cuda<T>(ctx_, ensure(&xn_final_, N * H), ensure(&rstd_final_, N), resid_.back().data(),
                                   w32(final_norm_), N, H, eps);
  T* logits = ensure(&logits_, N * V);
  gemm(GemmOp::kNT, N, V, H, logits, act_dtype<T>(), xn_final_.data(), wT(lm_head_), 0.f);
  const float ce_scale = out.targets > 0 ? 1.0f / static_cast<float>(out.targets) : 0.f;
  kernels::cross_entropy_cuda<T>(ctx_, ensure(&loss_rows_, N), train ? logits : nullptr, logits, targets_.data(), N, V,
                                 ce_scale);
  kernels::sum_cuda(ctx_, ensure(&loss_sum_, 1), loss_rows_.data(), N);
  double ce_sum = 0;
  MOEKIT_CUDA_CHECK(cudaMemcpyAsync(&ce_sum, loss_sum_.data(), sizeof(double), cudaMemcpyDeviceToHost, ctx_.stream()));
  // Router statistics of every MoE layer, then the router losses on the host (as the CPU model).
  for (Layer& L : layers_) {
    if (!L.sparse) continue;
    moe::RouterStats s;
    s.tokens = N;
    s.counts.assign(counts_[L.index].begin(), counts_[L.index].end());
    std::vector<float> ps(static_cast<size_t>(cfg_.num_experts));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(ps.data(), L.prob_sum.data(), ps.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                      ctx_.stream()));
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(&s.lse_sq_sum, L.lse_sq.data(), sizeof(double), cudaMemcpyDeviceToHost,
                                      ctx_.stream()));
    ctx_.synchronize();
    s.prob_sum.assign(ps.begin(), ps.end());
    stats.push_back(std::move(s));
  }
  ctx_.synchronize();
  out.ce = out.targets > 0 ? ce_sum / static_cast<double>(out.targets) : 0.0;
  out.total = out.ce;
  std::vector<std::vector<float>> dprob;
  std::vector<float> z_scale;
  add_router_losses(stats, cfg_, loss, ep_.dp, &out, &dprob, &z_scale);
  for (Layer& L : layers_) {
    if (!L.sparse) continue;
    const int m = L.moe_index;
    L.have_dprob = !dprob.empty();
    if (L.have_dprob) {
      ensure(&L.dprob, cfg_.num_experts);
      L.dprob.upload(dprob[m].data(), dprob[m].size());
    }
    L.z_scale = z_scale.empty() ? 0.f : z_scale[m];
  }
  have_cache_ = train;
  have_logits_ = !train;
  return out;
}

template <typename T>
void ImplT<T>::backward() {
  MOEKIT_CHECK(have_cache_, "backward() needs a preceding forward(train=true)");
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, N = B_ * S_;
  T* dxn = ensure(&dmlp_, N * H);
  T* dx = ensure(&dx_, N * H);
  T* dh = ensure(&dh_, N * H);
  // logits_ holds d loss / d logits (the cross-entropy wrote it in place).
  gemm(GemmOp::kTN, V, H, N, g32(lm_head_), DType::kF32, logits_.data(), xn_final_.data(), 1.f);
  gemm(GemmOp::kNN, N, H, V, dxn, act_dtype<T>(), logits_.data(), wT(lm_head_), 0.f);
  kernels::rmsnorm_backward_cuda<T>(ctx_, dx, g32(final_norm_), dxn, resid_.back().data(), w32(final_norm_),
                                    rstd_final_.data(), N, H, false);
  for (size_t li = layers_.size(); li-- > 0;) {
    Layer& L = layers_[li];
    T* dmlp = dmlp_.data();  // d / d xn2, then d / d xn1
    if (L.sparse) {
      moe_backward(L, dmlp, dx, N);
    } else {
      mlp_backward(dmlp, 0.f, L.gate_up, L.down, dx, L.xn2.data(), L.gu.data(), L.act.data(), N,
                   cfg_.intermediate_size);
    }
    // out = h + mlp(norm2(h))
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(dh, dx, N * H * sizeof(T), cudaMemcpyDeviceToDevice, ctx_.stream()));
    kernels::rmsnorm_backward_cuda<T>(ctx_, dh, g32(L.ln2), dmlp, L.h.data(), w32(L.ln2), L.rstd2.data(), N, H, true);
    // h = x + attn(norm1(x))
    attention_backward(L, dmlp, dh, B_, S_);
    MOEKIT_CUDA_CHECK(cudaMemcpyAsync(dx, dh, N * H * sizeof(T), cudaMemcpyDeviceToDevice, ctx_.stream()));
    kernels::rmsnorm_backward_cuda<T>(ctx_, dx, g32(L.ln1), dmlp, resid_[li].data(), w32(L.ln1), L.rstd1.data(), N,
                                      H, true);
  }
  kernels::embedding_backward_cuda<T>(ctx_, g32(embed_), dx, ids_.data(), N, H);
  have_cache_ = false;  // the logits buffer holds gradients now; a second backward would be wrong
}

}  // namespace

GpuModel::GpuModel(const config::ModelConfig& cfg, const ParamStore& layout, cuda::Context& ctx,
                   GpuPrecision precision, GpuParallel ep) {
  if (precision == GpuPrecision::kF32) impl_ = std::make_unique<ImplT<float>>(cfg, layout, ctx, ep);
  else impl_ = std::make_unique<ImplT<bf16>>(cfg, layout, ctx, ep);
}
GpuModel::~GpuModel() = default;

const config::ModelConfig& GpuModel::config() const { return impl_->config(); }
GpuPrecision GpuModel::precision() const { return impl_->precision(); }
void GpuModel::upload_weights(const ParamStore& host) { impl_->upload_weights(host); }
void GpuModel::download_weights(ParamStore* host) const { impl_->download(host, false); }
void GpuModel::download_grads(ParamStore* host) const { impl_->download(host, true); }
float* GpuModel::weights(bool expert) { return impl_->weights(expert); }
float* GpuModel::grads(bool expert) { return impl_->grads(expert); }
int64_t GpuModel::numel(bool expert) const { return impl_->numel(expert); }
cuda::bf16* GpuModel::compute_weights(bool expert) { return impl_->compute_weights(expert); }
void GpuModel::refresh_compute_weights() { impl_->refresh_compute_weights(); }
void GpuModel::zero_grad() { impl_->zero_grad(); }
LossTerms GpuModel::forward(const int64_t* inputs, const int64_t* targets, int64_t batch, int64_t seq,
                            const LossConfig& loss, bool train) {
  return impl_->forward(inputs, targets, batch, seq, loss, train);
}
void GpuModel::backward() { impl_->backward(); }
std::vector<float> GpuModel::logits() const { return impl_->logits(); }
const std::vector<std::vector<int64_t>>& GpuModel::expert_counts() const { return impl_->expert_counts(); }

}  // namespace moekit::model
