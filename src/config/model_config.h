// ModelConfig: the architecture of a Qwen2 (dense) or Qwen2-MoE model, with Hugging Face's
// field names. Read from moekit YAML (configs/models/*.yaml) or any HF config.json
// (model_type qwen2 / qwen2_moe, and the original Qwen v1 "qwen"), written back as config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace YAML { class Node; }

namespace moekit::config {

// The transformers release moekit's exports are tested against (tests/reference/README.md pins
// it); written as transformers_version into config.json and generated generation configs.
inline constexpr const char* kTransformersVersion = "4.45.2";

struct ModelConfig {
  std::string model_type = "qwen2";  // "qwen2" (dense) or "qwen2_moe"
  int64_t vocab_size = 151936;
  int64_t hidden_size = 2048;
  int64_t intermediate_size = 5504;  // dense MLP width (dense layers of an MoE model too)
  int64_t num_hidden_layers = 24;
  int64_t num_attention_heads = 16;
  int64_t num_key_value_heads = 16;
  int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 32768;
  double rope_theta = 1000000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = true;
  std::string hidden_act = "silu";
  double initializer_range = 0.02;
  int64_t bos_token_id = 151643;
  int64_t eos_token_id = 151643;
  int64_t pad_token_id = -1;  // -1: not known (config.json then carries none)
  std::string torch_dtype = "bfloat16";
  bool use_sliding_window = false;
  int64_t sliding_window = 32768;
  int64_t max_window_layers = 21;
  double attention_dropout = 0.0;

  // Qwen2-MoE (ignored when model_type == "qwen2").
  int64_t num_experts = 0;             // routed experts
  int64_t num_experts_per_tok = 0;     // top-k
  int64_t moe_intermediate_size = 0;   // routed expert width
  int64_t shared_expert_intermediate_size = 0;  // 0: no shared expert
  // Qwen2-MoE scales the shared expert by sigmoid(x . w_sg); DeepSeekMoE adds it ungated
  // (false). Not an HF Qwen2MoeConfig field: written to config.json only when false.
  bool shared_expert_gate = true;
  bool norm_topk_prob = false;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  double router_aux_loss_coef = 0.001;
  bool output_router_logits = false;
  // Routing variants (Megatron-Core's names; not HF Qwen2MoeConfig fields: written to
  // config.json only when not the default, and such models have no Qwen2-MoE export).
  // "softmax" (Qwen2-MoE) or "sigmoid" (DeepSeek-V3) scores (moe/router_math.h).
  std::string moe_router_score_function = "softmax";
  // Aux-loss-free balancing (DeepSeek-V3): a per-expert selection bias, updated from the
  // expert load by the trainer (run config moe.router_bias_update_rate).
  bool moe_router_enable_expert_bias = false;

  bool is_moe() const { return model_type == "qwen2_moe" && num_experts > 0; }
  int64_t head_size() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  // HF rule: sparse iff MoE model, layer not in mlp_only_layers, (layer+1) % step == 0.
  bool is_sparse_layer(int64_t layer) const;
  int64_t num_sparse_layers() const;

  // Throws moekit::Error naming the field and value when inconsistent.
  void validate() const;
};

// Parse from a YAML mapping with HF field names. Unknown keys are errors (named).
// `where` names the source (file path) in error messages.
ModelConfig model_config_from_yaml(const YAML::Node& node, const std::string& where);
// Parse an HF config.json text (qwen2, qwen2_moe, or Qwen v1 "qwen"). Unknown keys are
// ignored (HF configs carry many unrelated fields), missing required ones are errors.
ModelConfig model_config_from_hf_json(const std::string& json_text, const std::string& where);
// Load from a path: a .yaml/.yml file, a config.json, or a directory holding config.json.
ModelConfig load_model_config(const std::string& path);
// HF config.json (architectures, model_type and every qwen2 / qwen2_moe field).
std::string model_config_to_hf_json(const ModelConfig& c);
// Apply one "key=value" override (HF field name) — used by --set.
void model_config_set(ModelConfig* c, const std::string& key, const std::string& value);

}  // namespace moekit::config
