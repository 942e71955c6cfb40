// The model of model.h over backend ops. One file for every backend: a new layer variant is
// written here once.
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/rope.h"
#include "model/mlp.h"
#include "moe/token_dispatcher.h"

namespace moekit::model {

using backend::GemmOp;
using backend::reserve_act;
using backend::reserve_n;

AuxLossForm aux_loss_form_parse(const std::string& s) {
  if (s == "none") return AuxLossForm::kNone;
  if (s == "hf_pooled" || s == "hf") return AuxLossForm::kHfPooled;
  if (s == "switch") return AuxLossForm::kSwitch;
  if (s == "global_batch") return AuxLossForm::kGlobalBatch;
  MOEKIT_FAIL("unknown aux loss form '", s, "' (expected none, hf_pooled, switch or global_batch)");
}

const char* aux_loss_form_name(AuxLossForm f) {
  switch (f) {
    case AuxLossForm::kNone: return "none";
    case AuxLossForm::kHfPooled: return "hf_pooled";
    case AuxLossForm::kSwitch: return "switch";
    case AuxLossForm::kGlobalBatch: return "global_batch";
  }
  return "?";
}

struct Model::Layer {
  explicit Layer(backend::Backend& be)
      : xn1(be), rstd1(be), h(be), xn2(be), rstd2(be), q(be), k(be), v(be), ctx(be), saved(be), gu(be), act(be) {}
  bool sparse = false;
  Param ln1, ln2, wq, bq, wk, bk, wv, bv, wo;
  Param gate_up, down;  // dense MLP
  std::unique_ptr<moe::MoeLayer> moe;
  int moe_index = -1;   // index among MoE layers
  // Activations of the last forward (the layer's input is resid_[l]).
  backend::Buffer xn1, rstd1, h, xn2, rstd2;
  backend::Buffer q, k, v, ctx, saved;  // attention: after RoPE; ctx before o_proj; saved: backend's
  backend::Buffer gu, act;              // dense MLP (T, 2I), (T, I)
};

namespace {
std::string layer_prefix(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

// Router statistics summed over the data-parallel ranks: one all-reduce of L * (2E + 1)
// doubles (counts, score sums, tokens) per forward.
std::vector<moe::RouterStats> sum_over_ranks(const std::vector<moe::RouterStats>& local, parallel::Communicator* dp) {
  if (!dp || dp->size() == 1) return local;
  const size_t E = local[0].counts.size(), stride = 2 * E + 1;
  std::vector<double> buf(local.size() * stride);
  for (size_t l = 0; l < local.size(); ++l) {
    double* b = buf.data() + l * stride;
    std::copy(local[l].counts.begin(), local[l].counts.end(), b);
    std::copy(local[l].prob_sum.begin(), local[l].prob_sum.end(), b + E);
    b[2 * E] = static_cast<double>(local[l].tokens);
  }
  dp->all_reduce(buf.data(), static_cast<int64_t>(buf.size()), parallel::ReduceOp::kSum);
  std::vector<moe::RouterStats> global(local.size());
  for (size_t l = 0; l < local.size(); ++l) {
    const double* b = buf.data() + l * stride;
    global[l].counts.assign(b, b + E);
    global[l].prob_sum.assign(b + E, b + 2 * E);
    global[l].tokens = static_cast<int64_t>(b[2 * E]);
  }
  return global;
}

}  // namespace

void add_router_losses(const std::vector<moe::RouterStats>& stats, const config::ModelConfig& cfg,
                       const LossConfig& loss, parallel::Communicator* dp, LossTerms* out,
                       std::vector<std::vector<float>>* dscore, std::vector<float>* z_scale) {
  dscore->clear();
  z_scale->clear();
  if (stats.empty()) return;
  const int64_t E = cfg.num_experts, k = cfg.num_experts_per_tok;
  std::vector<std::vector<float>> g_hf, g_sw;
  std::vector<float> zs;
  out->aux_hf = moe::hf_pooled_aux_loss(stats, k, &g_hf);
  out->aux_switch = moe::switch_aux_loss(stats, k, &g_sw);
  out->z_loss = moe::router_z_loss(stats, &zs);
  dscore->assign(stats.size(), std::vector<float>(E, 0.f));
  z_scale->assign(stats.size(), 0.f);
  const std::vector<std::vector<float>>* g = nullptr;
  std::vector<std::vector<float>> g_gb;
  if (loss.aux == AuxLossForm::kGlobalBatch) {
    const int ranks = dp ? dp->size() : 1;
    out->aux_global = moe::global_batch_aux_loss(sum_over_ranks(stats, dp), k, ranks, &g_gb);
    out->total += loss.aux_coef * out->aux_global;
    g = &g_gb;
  } else if (loss.aux == AuxLossForm::kHfPooled) {
    out->total += loss.aux_coef * out->aux_hf;
    g = &g_hf;
  } else if (loss.aux == AuxLossForm::kSwitch) {
    out->total += loss.aux_coef * out->aux_switch;
    g = &g_sw;
  }
  if (g)
    for (size_t l = 0; l < stats.size(); ++l)
      for (int64_t e = 0; e < E; ++e) (*dscore)[l][e] = static_cast<float>(loss.aux_coef) * (*g)[l][e];
  if (loss.z_coef != 0.0) {
    MOEKIT_CHECK(cfg.moe_router_score_function == "softmax", "the router z-loss needs softmax scores "
                 "(moe_router_score_function is '", cfg.moe_router_score_function, "'): set loss.z_coef to 0");
    out->total += loss.z_coef * out->z_loss;
    for (size_t l = 0; l < stats.size(); ++l) (*z_scale)[l] = static_cast<float>(loss.z_coef) * zs[l];
  }
}

std::vector<std::string> parameter_names(const config::ModelConfig& cfg) {
  ParamStore store;
  declare_model_params(cfg, &store);
  std::vector<std::string> out;
  for (const auto& s : store.specs()) out.push_back(s.name);
  return out;
}

std::string expert_bias_name(int64_t layer) { return layer_prefix(layer) + "mlp.gate.e_score_correction_bias"; }

ExpertRange expert_range(const config::ModelConfig& cfg, int ep_rank, int ep_size) {
  if (!cfg.is_moe() || ep_size <= 1) return {0, cfg.is_moe() ? cfg.num_experts : 0};
  MOEKIT_CHECK(cfg.num_experts % ep_size == 0, "num_experts ", cfg.num_experts,
               " is not divisible by the expert-parallel size ", ep_size);
  const int64_t n = cfg.num_experts / ep_size;
  return {ep_rank * n, n};
}

Model::Model(const config::ModelConfig& cfg, const ModelParallel& par, backend::Backend& be)
    : cfg_(cfg), par_(par), be_(be), esz_(dtype_size(be.compute_dtype())), ids_(be), targets_(be), rope_cos_(be),
      rope_sin_(be), xn_final_(be), rstd_final_(be), logits_(be), attn_out_(be), mlp_out_(be), dx_(be), dh_(be),
      dmid_(be), scr_a_(be), scr_b_(be), dq_(be), dk_(be), dv_(be) {
  cfg_.validate();
  experts_ = expert_range(cfg_, par_.ep_rank(), par_.ep_size());
  declare_model_params(cfg_, &params_, experts_);
  params_.finalize(be_);
  bind_layers();
}

Model::~Model() = default;

void declare_model_params(const config::ModelConfig& cfg_, ParamStore* store, const ExpertRange& experts) {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, d = cfg_.head_size();
  const int64_t qd = cfg_.num_attention_heads * d, kvd = cfg_.num_key_value_heads * d;
  auto& P = *store;
  P.declare("model.embed_tokens.weight", {V, H}, ParamInit::kNormal);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    P.declare(p + "input_layernorm.weight", {H}, ParamInit::kOne);
    P.declare(p + "self_attn.q_proj.weight", {qd, H}, ParamInit::kNormal);
    if (cfg_.qkv_bias) P.declare(p + "self_attn.q_proj.bias", {qd}, ParamInit::kZero);
    P.declare(p + "self_attn.k_proj.weight", {kvd, H}, ParamInit::kNormal);
    if (cfg_.qkv_bias) P.declare(p + "self_attn.k_proj.bias", {kvd}, ParamInit::kZero);
    P.declare(p + "self_attn.v_proj.weight", {kvd, H}, ParamInit::kNormal);
    if (cfg_.qkv_bias) P.declare(p + "self_attn.v_proj.bias", {kvd}, ParamInit::kZero);
    P.declare(p + "self_attn.o_proj.weight", {H, qd}, ParamInit::kNormal);
    P.declare(p + "post_attention_layernorm.weight", {H}, ParamInit::kOne);
    if (!cfg_.is_sparse_layer(l)) {
      const int64_t I = cfg_.intermediate_size;
      P.declare(p + "mlp.gate_proj.weight", {I, H}, ParamInit::kNormal);  // gate then up: fused (2I, H)
      P.declare(p + "mlp.up_proj.weight", {I, H}, ParamInit::kNormal);
      P.declare(p + "mlp.down_proj.weight", {H, I}, ParamInit::kNormal);
      continue;
    }
    const int64_t E = cfg_.num_experts, I = cfg_.moe_intermediate_size, Is = cfg_.shared_expert_intermediate_size;
    P.declare(p + "mlp.gate.weight", {E, H}, ParamInit::kNormal);
    const int64_t e0 = experts.first, e1 = experts.count < 0 ? E : experts.first + experts.count;
    MOEKIT_CHECK(e0 >= 0 && e0 <= e1 && e1 <= E, "declare_model_params: experts [", e0, ", ", e1,
                 ") outside [0, ", E, ")");
    for (int64_t e = e0; e < e1; ++e) {  // expert stack: [gate; up; down] per expert, back to back
      const std::string pe = p + "mlp.experts." + std::to_string(e) + ".";
      P.declare(pe + "gate_proj.weight", {I, H}, ParamInit::kNormal, true);
      P.declare(pe + "up_proj.weight", {I, H}, ParamInit::kNormal, true);
      P.declare(pe + "down_proj.weight", {H, I}, ParamInit::kNormal, true);
    }
    if (Is > 0) {
      P.declare(p + "mlp.shared_expert.gate_proj.weight", {Is, H}, ParamInit::kNormal);
      P.declare(p + "mlp.shared_expert.up_proj.weight", {Is, H}, ParamInit::kNormal);
      P.declare(p + "mlp.shared_expert.down_proj.weight", {H, Is}, ParamInit::kNormal);
      if (cfg_.shared_expert_gate) P.declare(p + "mlp.shared_expert_gate.weight", {1, H}, ParamInit::kNormal);
    }
  }
  P.declare("model.norm.weight", {H}, ParamInit::kOne);
  if (!cfg_.tie_word_embeddings) P.declare("lm_head.weight", {V, H}, ParamInit::kNormal);
}

void Model::bind_layers() {
  auto& P = params_;
  embed_ = P.get("model.embed_tokens.weight");
  final_norm_ = P.get("model.norm.weight");
  lm_head_ = cfg_.tie_word_embeddings ? embed_ : P.get("lm_head.weight");
  auto opt = [&](const std::string& n) { return P.has(n) ? P.get(n) : Param{}; };
  int moe_count = 0;
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    auto L = std::make_unique<Layer>(be_);
    L->ln1 = P.get(p + "input_layernorm.weight");
    L->ln2 = P.get(p + "post_attention_layernorm.weight");
    L->wq = P.get(p + "self_attn.q_proj.weight");
    L->bq = opt(p + "self_attn.q_proj.bias");
    L->wk = P.get(p + "self_attn.k_proj.weight");
    L->bk = opt(p + "self_attn.k_proj.bias");
    L->wv = P.get(p + "self_attn.v_proj.weight");
    L->bv = opt(p + "self_attn.v_proj.bias");
    L->wo = P.get(p + "self_attn.o_proj.weight");
    L->sparse = cfg_.is_sparse_layer(l);
    if (!L->sparse) {
      L->gate_up = P.get(p + "mlp.gate_proj.weight");  // gate then up: one (2I, H) block
      L->down = P.get(p + "mlp.down_proj.weight");
    } else {
      moe::MoeParams mp;
      mp.router = P.get(p + "mlp.gate.weight");
      mp.experts = P.get(p + "mlp.experts." + std::to_string(experts_.first) + ".gate_proj.weight");
      if (cfg_.shared_expert_intermediate_size > 0) {
        mp.shared_gate_up = P.get(p + "mlp.shared_expert.gate_proj.weight");
        mp.shared_down = P.get(p + "mlp.shared_expert.down_proj.weight");
        mp.shared_gate = opt(p + "mlp.shared_expert_gate.weight");
      }
      moe::MoeDims md;
      md.hidden = cfg_.hidden_size;
      md.experts = cfg_.num_experts;
      md.topk = cfg_.num_experts_per_tok;
      md.inter = cfg_.moe_intermediate_size;
      md.shared_inter = cfg_.shared_expert_intermediate_size;
      md.norm_topk = cfg_.norm_topk_prob;
      md.score = cfg_.moe_router_score_function == "sigmoid" ? backend::ScoreFunction::kSigmoid
                                                             : backend::ScoreFunction::kSoftmax;
      md.expert_bias = cfg_.moe_router_enable_expert_bias;
      if (!moe_scratch_) moe_scratch_ = std::make_unique<moe::MoeScratch>(be_);
      std::unique_ptr<moe::TokenDispatcher> d;
      if (par_.ep_size() > 1)
        d = moe::make_all_to_all_dispatcher(be_, cfg_.num_experts, cfg_.hidden_size, *par_.ep,
                                            par_.ep_rows ? *par_.ep_rows : *par_.ep, moe_scratch_->dispatch);
      else
        d = moe::make_local_dispatcher(be_, cfg_.num_experts, cfg_.hidden_size, moe_scratch_->dispatch);
      L->moe = std::make_unique<moe::MoeLayer>(be_, mp, md, std::move(d), *moe_scratch_);
      L->moe_index = moe_count++;
    }
    layers_.push_back(std::move(L));
  }
  counts_.assign(layers_.size(), {});
}

int64_t Model::dropped_pairs() const {
  int64_t n = 0;
  for (const auto& L : layers_)
    if (L->sparse) n += L->moe->dropped();
  return n;
}

std::vector<std::vector<float>> Model::expert_bias() const {
  std::vector<std::vector<float>> out(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l)
    if (layers_[l]->sparse) out[l] = layers_[l]->moe->expert_bias();
  return out;
}

void Model::set_expert_bias(const std::vector<std::vector<float>>& bias) {
  MOEKIT_CHECK(bias.size() == layers_.size(), "set_expert_bias: ", bias.size(), " layers for a model of ",
               layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l)
    if (layers_[l]->sparse) layers_[l]->moe->set_expert_bias(bias[l]);
}

void Model::update_expert_bias(const std::vector<std::vector<int64_t>>& load, double rate) {
  MOEKIT_CHECK(load.size() == layers_.size(), "update_expert_bias: ", load.size(), " layers for a model of ",
               layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!layers_[l]->sparse) continue;
    std::vector<float> b = layers_[l]->moe->expert_bias();
    const std::vector<int64_t>& c = load[l];
    MOEKIT_CHECK(c.size() == b.size(), "update_expert_bias: layer ", l, " has ", c.size(), " loads for ", b.size(),
                 " experts");
    double mean = 0;
    for (int64_t x : c) mean += static_cast<double>(x);
    mean /= static_cast<double>(c.size());
    // An overloaded expert (load above the mean) is made less attractive, an underloaded one
    // more; equal load leaves the bias alone.
    for (size_t e = 0; e < b.size(); ++e) {
      const double err = mean - static_cast<double>(c[e]);
      b[e] += static_cast<float>(rate * ((err > 0) - (err < 0)));
    }
    layers_[l]->moe->set_expert_bias(b);
  }
}

void Model::attention_forward(Layer& L, void* y, int64_t B, int64_t S) {
  const int64_t T = B * S, H = cfg_.hidden_size, d = cfg_.head_size();
  const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, qd = nh * d, kvd = nkv * d;
  const backend::AttnShape shape{B, S, nh, nkv, d};
  void* q = reserve_act(L.q, T * qd);
  void* k = reserve_act(L.k, T * kvd);
  void* v = reserve_act(L.v, T * kvd);
  void* c = reserve_act(L.ctx, T * qd);
  linear_forward(be_, q, L.xn1.data(), L.wq, L.bq, T, qd, H);
  linear_forward(be_, k, L.xn1.data(), L.wk, L.bk, T, kvd, H);
  linear_forward(be_, v, L.xn1.data(), L.wv, L.bv, T, kvd, H);
  be_.rope(q, rope_cos_.as<float>(), rope_sin_.as<float>(), B, S, nh, d, false);
  be_.rope(k, rope_cos_.as<float>(), rope_sin_.as<float>(), B, S, nkv, d, false);
  be_.attention_forward(c, reserve_n<float>(L.saved, be_.attention_saved_floats(shape)), q, k, v, shape);
  be_.gemm({GemmOp::kNT, T, H, qd, be_.compute_dtype(), be_.compute_dtype()}, y, c, L.wo.c);
}

void Model::attention_backward(Layer& L, void* dx, const void* dy, int64_t B, int64_t S) {
  const int64_t T = B * S, H = cfg_.hidden_size, d = cfg_.head_size();
  const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, qd = nh * d, kvd = nkv * d;
  const DType ct = be_.compute_dtype();
  void* dctx = reserve_act(scr_a_, T * qd);
  void* dq = reserve_act(dq_, T * qd);
  void* dk = reserve_act(dk_, T * kvd);
  void* dv = reserve_act(dv_, T * kvd);
  be_.gemm({GemmOp::kTN, H, qd, T, ct, DType::kF32, 1.f, 1.f}, L.wo.g, dy, L.ctx.data());  // dWo += dy^T ctx
  be_.gemm({GemmOp::kNN, T, qd, H, ct, ct}, dctx, dy, L.wo.c);                            // dctx = dy Wo
  be_.attention_backward(dq, dk, dv, dctx, L.ctx.data(), L.saved.as<float>(), L.q.data(), L.k.data(), L.v.data(),
                         {B, S, nh, nkv, d});
  // The rotation is orthogonal: its backward is the inverse rotation.
  be_.rope(dq, rope_cos_.as<float>(), rope_sin_.as<float>(), B, S, nh, d, true);
  be_.rope(dk, rope_cos_.as<float>(), rope_sin_.as<float>(), B, S, nkv, d, true);
  linear_backward(be_, dx, 0.f, L.wq, L.bq, dq, L.xn1.data(), T, qd, H);
  linear_backward(be_, dx, 1.f, L.wk, L.bk, dk, L.xn1.data(), T, kvd, H);
  linear_backward(be_, dx, 1.f, L.wv, L.bv, dv, L.xn1.data(), T, kvd, H);
}

LossTerms Model::forward(const int64_t* inputs, const int64_t* targets, int64_t B, int64_t S, const LossConfig& loss,
                         bool train) {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, T = B * S;
  MOEKIT_CHECK(B > 0 && S > 0, "forward: empty batch (batch ", B, ", seq ", S, ")");
  LossTerms out;
  for (int64_t t = 0; t < T; ++t) {
    MOEKIT_CHECK(inputs[t] >= 0 && inputs[t] < V, "token id ", inputs[t], " at position ", t,
                 " is out of range for vocab_size ", V);
    MOEKIT_CHECK(targets[t] < V, "target id ", targets[t], " at position ", t, " is out of range for vocab_size ",
                 V);
    out.targets += targets[t] >= 0;
  }
  params_.refresh_compute();
  batch_ = B;
  seq_ = S;
  // Host -> device copies are ordered after the previous backward on every backend
  // (backend.h), so the ids the last embedding backward read are not overwritten under it.
  be_.upload(ids_.reserve(sizeof(int64_t) * T), inputs, sizeof(int64_t) * T);
  be_.upload(targets_.reserve(sizeof(int64_t) * T), targets, sizeof(int64_t) * T);
  if (rope_len_ != S) {
    std::vector<float> cos, sin;
    kernels::rope_tables(&cos, &sin, S, cfg_.head_size(), cfg_.rope_theta);
    be_.upload(rope_cos_.reserve(cos.size() * sizeof(float)), cos.data(), cos.size() * sizeof(float));
    be_.upload(rope_sin_.reserve(sin.size() * sizeof(float)), sin.data(), sin.size() * sizeof(float));
    rope_len_ = S;
  }
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  if (resid_.size() != layers_.size() + 1)
    for (size_t i = resid_.size(); i < layers_.size() + 1; ++i) resid_.emplace_back(be_);
  be_.embedding_forward(reserve_act(resid_[0], T * H), embed_.w, ids_.as<int64_t>(), T, H);
  void* attn_out = reserve_act(attn_out_, T * H);
  void* mlp_out = reserve_act(mlp_out_, T * H);
  std::vector<moe::RouterStats> stats;
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = *layers_[l];
    const void* x = resid_[l].data();
    be_.rmsnorm_forward(reserve_act(L.xn1, T * H), reserve_n<float>(L.rstd1, T), x, L.ln1.w, T, H, eps);
    attention_forward(L, attn_out, B, S);
    be_.add(reserve_act(L.h, T * H), x, attn_out, T * H);
    be_.rmsnorm_forward(reserve_act(L.xn2, T * H), reserve_n<float>(L.rstd2, T), L.h.data(), L.ln2.w, T, H, eps);
    if (L.sparse) {
      L.moe->forward(mlp_out, L.xn2.data(), T, moe_opt_);
      stats.push_back(L.moe->stats());
      counts_[l] = L.moe->chosen_counts();
    } else {
      const int64_t I = cfg_.intermediate_size;
      mlp_forward(be_, mlp_out, 0.f, reserve_act(L.gu, T * 2 * I), reserve_act(L.act, T * I), L.xn2.data(), L.gate_up, L.down, T, H,
                  I);
    }
    be_.add(reserve_act(resid_[l + 1], T * H), L.h.data(), mlp_out, T * H);
  }
  // Head and loss. A training forward turns the logits into their gradient in place.
  be_.rmsnorm_forward(reserve_act(xn_final_, T * H), reserve_n<float>(rstd_final_, T), resid_.back().data(), final_norm_.w, T, H, eps);
  void* logits = reserve_act(logits_, T * V);
  be_.gemm({GemmOp::kNT, T, V, H, be_.compute_dtype(), be_.compute_dtype()}, logits, xn_final_.data(),
           lm_head_.c);
  const float scale = out.targets > 0 ? 1.0f / static_cast<float>(out.targets) : 0.f;
  const double ce_sum = be_.cross_entropy(train ? logits : nullptr, logits, targets_.as<int64_t>(), T, V, scale);
  out.ce = out.targets > 0 ? ce_sum / static_cast<double>(out.targets) : 0.0;
  out.total = out.ce;
  add_router_losses(stats, cfg_, loss, par_.dp, &out, &dscore_, &z_scale_);
  have_cache_ = train;
  have_logits_ = !train;
  return out;
}

std::vector<float> Model::logits() const {
  MOEKIT_CHECK(have_logits_, "Model::logits: the last forward was a training forward (its logits were overwritten "
                             "by their gradient) or there was none");
  const int64_t n = batch_ * seq_ * cfg_.vocab_size;
  std::vector<float> out(static_cast<size_t>(n));
  if (be_.compute_dtype() == DType::kF32) {
    be_.download(out.data(), logits_.data(), out.size() * sizeof(float));
  } else {
    backend::Buffer tmp(be_, out.size() * sizeof(float));
    be_.to_f32(tmp.as<float>(), logits_.data(), n);
    be_.download(out.data(), tmp.data(), out.size() * sizeof(float));
  }
  return out;
}

void Model::backward() {
  MOEKIT_CHECK(have_cache_, "backward() needs a preceding forward(train=true)");
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, T = batch_ * seq_;
  const DType ct = be_.compute_dtype();
  void* dmid = reserve_act(dmid_, T * H);  // d / d xn (final norm, then each layer's norms)
  void* dx = reserve_act(dx_, T * H);
  void* dh = reserve_act(dh_, T * H);
  // LM head and final norm: logits_ holds d loss / d logits.
  be_.gemm({GemmOp::kTN, V, H, T, ct, DType::kF32, 1.f, 1.f}, lm_head_.g, logits_.data(), xn_final_.data());
  be_.gemm({GemmOp::kNN, T, H, V, ct, ct}, dmid, logits_.data(), lm_head_.c);
  be_.rmsnorm_backward(dx, final_norm_.g, dmid, resid_.back().data(), final_norm_.w, rstd_final_.as<float>(), T, H,
                       false);
  for (size_t li = layers_.size(); li-- > 0;) {
    Layer& L = *layers_[li];
    // out = h + mlp(norm2(h))
    if (L.sparse) {
      const int m = L.moe_index;
      L.moe->backward(dmid, dx, L.xn2.data(), dscore_.empty() ? std::vector<float>{} : dscore_[m],
                      z_scale_.empty() ? 0.f : z_scale_[m]);
    } else {
      const int64_t I = cfg_.intermediate_size;
      mlp_backward(be_, dmid, 0.f, L.gate_up, L.down, dx, L.xn2.data(), L.gu.data(), L.act.data(), reserve_act(scr_a_, T * I),
                   reserve_act(scr_b_, T * 2 * I), T, H, I);
    }
    be_.copy(dh, dx, static_cast<size_t>(T * H) * esz_);
    be_.rmsnorm_backward(dh, L.ln2.g, dmid, L.h.data(), L.ln2.w, L.rstd2.as<float>(), T, H, true);
    // h = x + attn(norm1(x))
    attention_backward(L, dmid, dh, batch_, seq_);
    be_.copy(dx, dh, static_cast<size_t>(T * H) * esz_);
    be_.rmsnorm_backward(dx, L.ln1.g, dmid, resid_[li].data(), L.ln1.w, L.rstd1.as<float>(), T, H, true);
  }
  be_.embedding_backward(embed_.g, dx, ids_.as<int64_t>(), T, H);
  have_cache_ = false;  // the logits buffer holds gradients now; a second backward would be wrong
}

}  // namespace moekit::model
