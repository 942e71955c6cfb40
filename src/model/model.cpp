#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/cross_entropy.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "model/mlp.h"

namespace moekit::model {

using namespace moekit::kernels;

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
  bool sparse = false;
  Param ln1, ln2;
  std::unique_ptr<AttentionLayer> attn;
  Param gate_up, down;  // dense MLP
  std::unique_ptr<moe::MoeLayer> moe;
  int moe_index = -1;   // index among MoE layers
  // Activations.
  std::vector<float> x_in, xn1, rstd1, attn_out, h, xn2, rstd2, mlp_out;
  AttnCache attn_cache;
  std::vector<float> gu, act;  // dense MLP
  moe::MoeCache moe_cache;
};

namespace {
std::string layer_prefix(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

// Router statistics summed over the data-parallel ranks: one all-reduce of L * (2E + 1)
// doubles (counts, probability sums, tokens) per forward.
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
                       std::vector<std::vector<float>>* dprob, std::vector<float>* z_scale) {
  dprob->clear();
  z_scale->clear();
  if (stats.empty()) return;
  const int64_t E = cfg.num_experts, k = cfg.num_experts_per_tok;
  std::vector<std::vector<float>> g_hf, g_sw;
  std::vector<float> zs;
  out->aux_hf = moe::hf_pooled_aux_loss(stats, k, &g_hf);
  out->aux_switch = moe::switch_aux_loss(stats, k, &g_sw);
  out->z_loss = moe::router_z_loss(stats, &zs);
  dprob->assign(stats.size(), std::vector<float>(E, 0.f));
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
      for (int64_t e = 0; e < E; ++e) (*dprob)[l][e] = static_cast<float>(loss.aux_coef) * (*g)[l][e];
  if (loss.z_coef != 0.0) {
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

ExpertRange expert_range(const config::ModelConfig& cfg, int ep_rank, int ep_size) {
  if (!cfg.is_moe() || ep_size <= 1) return {0, cfg.is_moe() ? cfg.num_experts : 0};
  MOEKIT_CHECK(cfg.num_experts % ep_size == 0, "num_experts ", cfg.num_experts,
               " is not divisible by the expert-parallel size ", ep_size);
  const int64_t n = cfg.num_experts / ep_size;
  return {ep_rank * n, n};
}

Model::Model(const config::ModelConfig& cfg, const ModelParallel& par) : cfg_(cfg), par_(par) {
  cfg_.validate();
  experts_ = expert_range(cfg_, par_.ep_rank(), par_.ep_size());
  declare_model_params(cfg_, &params_, experts_);
  params_.finalize();
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
  const int64_t H = cfg_.hidden_size, d = cfg_.head_size();
  embed_ = P.get("model.embed_tokens.weight");
  final_norm_ = P.get("model.norm.weight");
  lm_head_ = cfg_.tie_word_embeddings ? embed_ : P.get("lm_head.weight");
  auto opt = [&](const std::string& n) { return P.has(n) ? P.get(n) : Param{}; };
  int moe_count = 0;
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    auto L = std::make_unique<Layer>();
    L->ln1 = P.get(p + "input_layernorm.weight");
    L->ln2 = P.get(p + "post_attention_layernorm.weight");
    AttnParams ap{P.get(p + "self_attn.q_proj.weight"), opt(p + "self_attn.q_proj.bias"),
                  P.get(p + "self_attn.k_proj.weight"), opt(p + "self_attn.k_proj.bias"),
                  P.get(p + "self_attn.v_proj.weight"), opt(p + "self_attn.v_proj.bias"),
                  P.get(p + "self_attn.o_proj.weight")};
    L->attn = std::make_unique<AttentionLayer>(ap, H, cfg_.num_attention_heads, cfg_.num_key_value_heads, d);
    L->sparse = cfg_.is_sparse_layer(l);
    if (!L->sparse) {
      L->gate_up = P.get(p + "mlp.gate_proj.weight");
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
      moe::MoeDims md{H, cfg_.num_experts, cfg_.num_experts_per_tok, cfg_.moe_intermediate_size,
                      cfg_.shared_expert_intermediate_size, cfg_.norm_topk_prob};
      moe::ExpertParallel ep;
      if (par_.ep_size() > 1) ep = {par_.ep, experts_.first};
      L->moe = std::make_unique<moe::MoeLayer>(mp, md, ep);
      L->moe_index = moe_count++;
    }
    layers_.push_back(std::move(L));
  }
}

const moe::RouterState* Model::router_state(int64_t layer) const {
  MOEKIT_CHECK(layer >= 0 && layer < static_cast<int64_t>(layers_.size()), "router_state: layer ", layer,
               " out of range");
  return layers_[layer]->sparse ? &layers_[layer]->moe_cache.router : nullptr;
}

LossTerms Model::forward(const int64_t* inputs, const int64_t* targets, int64_t B, int64_t S, const LossConfig& loss,
                         bool train) {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, T = B * S;
  MOEKIT_CHECK(B > 0 && S > 0, "forward: empty batch (batch ", B, ", seq ", S, ")");
  for (int64_t t = 0; t < T; ++t) {
    MOEKIT_CHECK(inputs[t] >= 0 && inputs[t] < V, "token id ", inputs[t], " at position ", t,
                 " is out of range for vocab_size ", V);
    MOEKIT_CHECK(targets[t] < V, "target id ", targets[t], " at position ", t, " is out of range for vocab_size ",
                 V);
  }
  batch_ = B;
  seq_ = S;
  inputs_.assign(inputs, inputs + T);
  if (rope_len_ != S) {
    rope_tables(&rope_cos_, &rope_sin_, S, cfg_.head_size(), cfg_.rope_theta);
    rope_len_ = S;
  }
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  // Embedding.
  std::vector<float> x(T * H);
  for (int64_t t = 0; t < T; ++t) std::memcpy(&x[t * H], embed_.w + inputs[t] * H, H * sizeof(float));
  std::vector<moe::RouterStats> stats;
  for (auto& Lp : layers_) {
    Layer& L = *Lp;
    L.x_in = x;
    L.xn1.resize(T * H);
    L.rstd1.resize(T);
    L.attn_out.resize(T * H);
    rmsnorm_forward(L.xn1.data(), L.rstd1.data(), x.data(), L.ln1.w, T, H, eps);
    L.attn->forward(L.attn_out.data(), &L.attn_cache, L.xn1.data(), B, S, rope_cos_.data(), rope_sin_.data());
    L.h.resize(T * H);
    for (int64_t i = 0; i < T * H; ++i) L.h[i] = x[i] + L.attn_out[i];
    L.xn2.resize(T * H);
    L.rstd2.resize(T);
    L.mlp_out.resize(T * H);
    rmsnorm_forward(L.xn2.data(), L.rstd2.data(), L.h.data(), L.ln2.w, T, H, eps);
    if (L.sparse) {
      L.moe->forward(L.mlp_out.data(), &L.moe_cache, L.xn2.data(), T);
      stats.push_back(L.moe->stats(L.moe_cache));
    } else {
      const int64_t I = cfg_.intermediate_size;
      L.gu.resize(T * 2 * I);
      L.act.resize(T * I);
      mlp_forward(L.mlp_out.data(), 0.f, L.gu.data(), L.act.data(), L.xn2.data(), {L.gate_up.w, L.down.w}, T, H, I);
    }
    for (int64_t i = 0; i < T * H; ++i) x[i] = L.h[i] + L.mlp_out[i];
  }
  // Head and loss.
  x_final_ = std::move(x);
  xn_final_.resize(T * H);
  rstd_final_.resize(T);
  rmsnorm_forward(xn_final_.data(), rstd_final_.data(), x_final_.data(), final_norm_.w, T, H, eps);
  logits_.resize(T * V);
  matmul_nt(logits_.data(), xn_final_.data(), lm_head_.w, T, V, H);
  LossTerms out;
  for (int64_t t = 0; t < T; ++t) out.targets += targets[t] >= 0;
  const float scale = out.targets > 0 ? 1.0f / static_cast<float>(out.targets) : 0.f;
  if (train) dlogits_.resize(T * V);
  double ce_sum = cross_entropy(train ? dlogits_.data() : nullptr, logits_.data(), targets, T, V, scale);
  out.ce = out.targets > 0 ? ce_sum / static_cast<double>(out.targets) : 0.0;
  out.total = out.ce;
  add_router_losses(stats, cfg_, loss, par_.dp, &out, &dprob_, &z_scale_);
  have_cache_ = train;
  return out;
}

void Model::backward() {
  MOEKIT_CHECK(have_cache_, "backward() needs a preceding forward(train=true)");
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, T = batch_ * seq_;
  // LM head and final norm.
  std::vector<float> dxn(T * H), dx(T * H);
  matmul_tn(lm_head_.g, dlogits_.data(), xn_final_.data(), V, H, T, 1.f);  // dW_lm += dz^T xn
  matmul_nn(dxn.data(), dlogits_.data(), lm_head_.w, T, H, V);              // dxn = dz W_lm
  rmsnorm_backward(dx.data(), final_norm_.g, dxn.data(), x_final_.data(), final_norm_.w, rstd_final_.data(), T, H,
                   false);
  std::vector<float> dmlp(T * H), dh(T * H);
  for (int64_t l = static_cast<int64_t>(layers_.size()) - 1; l >= 0; --l) {
    Layer& L = *layers_[l];
    // out = h + mlp(norm2(h))
    if (L.sparse) {
      const int m = L.moe_index;
      L.moe->backward(dmlp.data(), dx.data(), L.moe_cache, L.xn2.data(), dprob_.empty() ? nullptr : dprob_[m].data(),
                      z_scale_.empty() ? 0.f : z_scale_[m]);
    } else {
      const int64_t I = cfg_.intermediate_size;
      std::vector<float> scratch(T * 3 * I);
      mlp_backward(dmlp.data(), 0.f, {L.gate_up.g, L.down.g}, dx.data(), L.xn2.data(), L.gu.data(), L.act.data(),
                   {L.gate_up.w, L.down.w}, T, H, I, scratch.data());
    }
    dh = dx;
    rmsnorm_backward(dh.data(), L.ln2.g, dmlp.data(), L.h.data(), L.ln2.w, L.rstd2.data(), T, H, true);
    // h = x + attn(norm1(x))
    L.attn->backward(dmlp.data(), dh.data(), L.attn_cache, L.xn1.data(), batch_, seq_, rope_cos_.data(),
                     rope_sin_.data());
    dx = dh;
    rmsnorm_backward(dx.data(), L.ln1.g, dmlp.data(), L.x_in.data(), L.ln1.w, L.rstd1.data(), T, H, true);
  }
  for (int64_t t = 0; t < T; ++t) {
    float* g = embed_.g + inputs_[t] * H;
    for (int64_t i = 0; i < H; ++i) g[i] += dx[t * H + i];
  }
}

}  // namespace moekit::model
