// The Qwen2 / Qwen2-MoE causal LM, written once over a backend (backend/backend.h): parameters
// by HF name, forward with the loss, backward into the gradient arena. The CPU backend runs it
// in f32 (the reference that matches transformers); the CUDA backend in f32 or bf16 over the
// same code. Forward keeps every activation its backward needs.
//   embed -> [x + attn(norm(x)) ; h + mlp_or_moe(norm(h))] x L -> norm -> lm_head -> CE (+ aux)
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "config/model_config.h"
#include "model/params.h"
#include "moe/moe_layer.h"
#include "parallel/communicator.h"

namespace moekit::model {

// Which load-balancing loss is added to the objective. hf_pooled and switch are always
// reported; global_batch (counts summed over the data-parallel ranks) only when chosen, as it
// needs a collective over the data-parallel group in every forward.
enum class AuxLossForm { kNone, kHfPooled, kSwitch, kGlobalBatch };
AuxLossForm aux_loss_form_parse(const std::string& s);  // "none", "hf_pooled", "switch", "global_batch"
const char* aux_loss_form_name(AuxLossForm f);

struct LossConfig {
  AuxLossForm aux = AuxLossForm::kHfPooled;
  double aux_coef = 0.0;  // multiplies the chosen aux loss
  double z_coef = 0.0;    // multiplies the router z-loss
};

struct LossTerms {
  double ce = 0;         // mean cross-entropy over counted targets
  int64_t targets = 0;   // number of counted targets
  double aux_hf = std::numeric_limits<double>::quiet_NaN();      // HF pooled aux (MoE only)
  double aux_switch = std::numeric_limits<double>::quiet_NaN();  // per-layer Switch aux, mean
  double aux_global = std::numeric_limits<double>::quiet_NaN();  // global-batch aux (when chosen)
  double z_loss = std::numeric_limits<double>::quiet_NaN();      // router z-loss
  double total = 0;      // what backward() differentiates
};

// The process groups a model runs over (none owned; all optional). With ep of size P > 1 the
// model holds only experts [ep->rank() * E/P, (ep->rank() + 1) * E/P) of every MoE layer, under
// their global HF names, and every rank of the ep group must call forward/backward together.
// ep carries the per-expert row counts (host memory); ep_rows, when set, carries the token rows
// (memory of the model's backend: the NCCL mirror of ep on GPUs; ep itself when null). dp (all
// data-parallel ranks, host) is used only by the global-batch aux loss.
struct ModelParallel {
  parallel::Communicator* dp = nullptr;
  parallel::Communicator* ep = nullptr;
  parallel::Communicator* ep_rows = nullptr;
  int ep_size() const { return ep ? ep->size() : 1; }
  int ep_rank() const { return ep ? ep->rank() : 0; }
};

// The routed experts one rank holds: [first, first + count) of num_experts.
struct ExpertRange {
  int64_t first = 0;
  int64_t count = -1;  // -1: all
};
ExpertRange expert_range(const config::ModelConfig& cfg, int ep_rank, int ep_size);

class Model {
 public:
  explicit Model(const config::ModelConfig& cfg, const ModelParallel& par = {}, backend::Backend& be = backend::cpu());
  ~Model();

  const config::ModelConfig& config() const { return cfg_; }
  const ModelParallel& parallel() const { return par_; }
  const ExpertRange& experts_held() const { return experts_; }
  backend::Backend& backend() const { return be_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  // Run-time MoE settings (capacity factor); dropless by default.
  void set_moe_options(const moe::MoeOptions& o) { moe_opt_ = o; }

  // inputs, targets: (B, S) host token ids; a target < 0 is not counted. Keeps activations for
  // backward() when `train` is set. Token ids outside [0, vocab) are an error.
  LossTerms forward(const int64_t* inputs, const int64_t* targets, int64_t batch, int64_t seq,
                    const LossConfig& loss, bool train = true);
  // Logits (B*S, V) of the last forward, on the host. Needs forward(train = false): a training
  // forward overwrites the logits with their gradient.
  std::vector<float> logits() const;
  // d total / d params, accumulated into params().grads(). Requires forward(train=true).
  void backward();

  // Per layer (empty for dense layers): (token, slot) pairs the router sent to each expert in
  // the last forward, before any capacity dropping (host).
  const std::vector<std::vector<int64_t>>& expert_counts() const { return counts_; }
  // Pairs dropped by the capacity factor in the last forward, over all MoE layers.
  int64_t dropped_pairs() const;

  // Aux-loss-free balancing (moe_router_enable_expert_bias): the selection bias per MoE layer
  // (layer index -> E values; empty entries for dense layers). update_expert_bias applies one
  // step of DeepSeek-V3's rule from the step's expert load over the global batch:
  // b_e += rate * sign(mean_e load - load_e).
  std::vector<std::vector<float>> expert_bias() const;
  void set_expert_bias(const std::vector<std::vector<float>>& bias);
  void update_expert_bias(const std::vector<std::vector<int64_t>>& load, double rate);

 private:
  struct Layer;
  void bind_layers();
  void attention_forward(Layer& L, void* y, int64_t B, int64_t S);
  void attention_backward(Layer& L, void* dx, const void* dy, int64_t B, int64_t S);

  config::ModelConfig cfg_;
  ModelParallel par_;
  backend::Backend& be_;
  size_t esz_;
  ExpertRange experts_;
  ParamStore params_;
  std::unique_ptr<moe::MoeScratch> moe_scratch_;  // shared by the MoE layers (outlives them)
  std::vector<std::unique_ptr<Layer>> layers_;
  Param embed_, final_norm_, lm_head_;
  moe::MoeOptions moe_opt_;
  std::vector<std::vector<int64_t>> counts_;
  // Inputs and activations of the last forward.
  int64_t batch_ = 0, seq_ = 0, rope_len_ = 0;
  bool have_cache_ = false, have_logits_ = false;
  backend::Buffer ids_, targets_, rope_cos_, rope_sin_;
  std::vector<backend::Buffer> resid_;  // (L + 1) residual streams (T, H): layer l reads resid_[l]
  backend::Buffer xn_final_, rstd_final_, logits_;
  // Router-loss gradients per MoE layer, set by forward.
  std::vector<std::vector<float>> dscore_;
  std::vector<float> z_scale_;
  // Scratch: reused within one op sequence, never across forward/backward.
  backend::Buffer attn_out_, mlp_out_, dx_, dh_, dmid_, scr_a_, scr_b_, dq_, dk_, dv_;
};

// The router losses of one forward from its per-MoE-layer statistics (in layer order): fills
// out->aux_hf, aux_switch, z_loss (and aux_global when chosen; its statistics are summed over
// `dp`), adds the chosen terms to out->total, and writes each layer's gradient on the router
// scores (dscore, per expert) and z-loss scale for the backward. No-op without MoE layers.
void add_router_losses(const std::vector<moe::RouterStats>& stats, const config::ModelConfig& cfg,
                       const LossConfig& loss, parallel::Communicator* dp, LossTerms* out,
                       std::vector<std::vector<float>>* dscore, std::vector<float>* z_scale);

// Declare every parameter of `cfg` (HF names, shapes, init kinds) without allocating; of the
// routed experts only those in `experts`.
void declare_model_params(const config::ModelConfig& cfg, ParamStore* store, const ExpertRange& experts = {});
// Names of all parameters in HF order (embed, layers, norm, lm_head unless tied).
std::vector<std::string> parameter_names(const config::ModelConfig& cfg);
// HF-style name of a MoE layer's expert-bias buffer (checkpoints store it beside the parameters).
std::string expert_bias_name(int64_t layer);

}  // namespace moekit::model
