// Tests of ModelConfig: the shipped YAML configs (values from the HF config.json files of
// Qwen1.5, anchors A6), HF config.json parsing (qwen2, qwen2_moe, Qwen v1), the config.json
// round trip, every validate() rule, YAML / --set error messages and sparse-layer placement.
#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>

#include "config/model_config.h"
#include "config/run_config.h"
#include "core/check.h"
#include "test_util.h"

namespace moekit::config {
namespace {

namespace fs = std::filesystem;

const std::string kModelsDir = std::string(MOEKIT_SOURCE_DIR) + "/configs/models";

ModelConfig from_yaml_text(const std::string& text, const std::string& where = "test.yaml") {
  return model_config_from_yaml(YAML::Load(text), where);
}

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.hidden_act, b.hidden_act);
  EXPECT_EQ(a.initializer_range, b.initializer_range);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.use_sliding_window, b.use_sliding_window);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.max_window_layers, b.max_window_layers);
  EXPECT_EQ(a.attention_dropout, b.attention_dropout);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.shared_expert_intermediate_size, b.shared_expert_intermediate_size);
  EXPECT_EQ(a.shared_expert_gate, b.shared_expert_gate);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.decoder_sparse_step, b.decoder_sparse_step);
  EXPECT_EQ(a.mlp_only_layers, b.mlp_only_layers);
  EXPECT_EQ(a.router_aux_loss_coef, b.router_aux_loss_coef);
  EXPECT_EQ(a.output_router_logits, b.output_router_logits);
}

ModelConfig tiny_moe() { return load_model_config(kModelsDir + "/tiny-moe.yaml"); }
ModelConfig tiny_dense() { return load_model_config(kModelsDir + "/tiny-dense.yaml"); }

// A scratch directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("moekit_model_config_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

// ---- shipped configs -----------------------------------------------------------------------

TEST(ModelConfig, EveryShippedConfigLoadsAndValidates) {
  int n = 0;
  for (const auto& entry : fs::directory_iterator(kModelsDir)) {
    const std::string ext = entry.path().extension().string();
    if (ext != ".yaml" && ext != ".yml" && ext != ".json") continue;
    SCOPED_TRACE(entry.path().string());
    ModelConfig c;
    EXPECT_NO_THROW(c = load_model_config(entry.path().string()));
    EXPECT_NO_THROW(c.validate());
    ++n;
  }
  EXPECT_GE(n, 6);
}

TEST(ModelConfig, Qwen15MoeA27bHasHfValues) {
  const ModelConfig c = load_model_config(kModelsDir + "/qwen1.5-moe-a2.7b.yaml");
  EXPECT_EQ(c.model_type, "qwen2_moe");
  EXPECT_TRUE(c.is_moe());
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 5632);
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 16);
  EXPECT_EQ(c.head_size(), 128);
  EXPECT_EQ(c.num_experts, 60);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.shared_expert_intermediate_size, 5632);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_DOUBLE_EQ(c.router_aux_loss_coef, 0.001);
  EXPECT_FALSE(c.output_router_logits);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.num_sparse_layers(), 24);
  EXPECT_TRUE(c.shared_expert_gate);
}

TEST(ModelConfig, DeepSeekMoe16bAsQwen2Moe) {
  const ModelConfig c = load_model_config(kModelsDir + "/deepseek-moe-16b.yaml");
  EXPECT_EQ(c.model_type, "qwen2_moe");
  EXPECT_EQ(c.vocab_size, 102400);
  EXPECT_EQ(c.num_hidden_layers, 28);
  EXPECT_EQ(c.head_size(), 128);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.num_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.shared_expert_intermediate_size, 2 * 1408);
  EXPECT_FALSE(c.shared_expert_gate);
  EXPECT_FALSE(c.is_sparse_layer(0));  // first_k_dense_replace = 1
  EXPECT_TRUE(c.is_sparse_layer(1));
  EXPECT_EQ(c.num_sparse_layers(), 27);
  EXPECT_EQ(c.intermediate_size, 10944);
}

TEST(ModelConfig, Qwen15DenseConfigsHaveHfValues) {
  const ModelConfig s = load_model_config(kModelsDir + "/qwen1.5-1.8b.yaml");
  EXPECT_EQ(s.model_type, "qwen2");
  EXPECT_FALSE(s.is_moe());
  EXPECT_EQ(s.hidden_size, 2048);
  EXPECT_EQ(s.intermediate_size, 5504);
  EXPECT_EQ(s.num_hidden_layers, 24);
  EXPECT_EQ(s.num_attention_heads, 16);
  EXPECT_EQ(s.num_key_value_heads, 16);
  EXPECT_EQ(s.vocab_size, 151936);
  EXPECT_EQ(s.max_position_embeddings, 32768);
  EXPECT_EQ(s.max_window_layers, 21);
  EXPECT_DOUBLE_EQ(s.rope_theta, 1e6);
  EXPECT_EQ(s.num_sparse_layers(), 0);

  const ModelConfig b = load_model_config(kModelsDir + "/qwen1.5-7b.yaml");
  EXPECT_EQ(b.hidden_size, 4096);
  EXPECT_EQ(b.intermediate_size, 11008);
  EXPECT_EQ(b.num_hidden_layers, 32);
  EXPECT_EQ(b.num_attention_heads, 32);
  EXPECT_EQ(b.num_key_value_heads, 32);
  EXPECT_EQ(b.max_window_layers, 28);
  EXPECT_EQ(b.head_size(), 128);
}

TEST(ModelConfig, TinyConfigsHaveTheirSizes) {
  const ModelConfig d = tiny_dense();
  EXPECT_EQ(d.vocab_size, 512);
  EXPECT_EQ(d.hidden_size, 64);
  EXPECT_EQ(d.intermediate_size, 172);
  EXPECT_EQ(d.num_key_value_heads, 2);
  EXPECT_EQ(d.eos_token_id, 0);
  const ModelConfig m = tiny_moe();
  EXPECT_EQ(m.num_experts, 8);
  EXPECT_EQ(m.num_experts_per_tok, 2);
  EXPECT_EQ(m.moe_intermediate_size, 32);
  EXPECT_EQ(m.shared_expert_intermediate_size, 64);
  EXPECT_DOUBLE_EQ(m.router_aux_loss_coef, 0.01);
  EXPECT_EQ(m.num_sparse_layers(), 4);
  const ModelConfig bench = load_model_config(kModelsDir + "/bench-moe.yaml");
  EXPECT_EQ(bench.vocab_size, 4096);
  EXPECT_EQ(bench.num_experts, 16);
  EXPECT_EQ(bench.num_experts_per_tok, 4);
  EXPECT_EQ(bench.moe_intermediate_size, 256);
}

// ---- HF config.json ------------------------------------------------------------------------

TEST(ModelConfig, ParsesHfQwen2Json) {
  const ModelConfig c = model_config_from_hf_json(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 5504, "max_position_embeddings": 32768, "max_window_layers": 21,
    "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.37.0",
    "use_cache": true, "use_sliding_window": false, "vocab_size": 151936,
    "some_unrelated_field": {"x": 1}})", "qwen2.json");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.intermediate_size, 5504);
  EXPECT_EQ(c.eos_token_id, 151645);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.head_dim, 0);
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_FALSE(c.is_moe());
}

TEST(ModelConfig, HfQwen2JsonDefaults) {
  // num_key_value_heads null -> heads; rope_theta, sliding window from Qwen2Config defaults.
  const ModelConfig c = model_config_from_hf_json(R"({"model_type": "qwen2",
    "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": null, "eos_token_id": [7, 8]})", "d.json");
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.max_window_layers, 28);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.eos_token_id, 7);
  EXPECT_EQ(c.pad_token_id, -1);  // not given: unknown, and config.json then carries none
  EXPECT_EQ(model_config_to_hf_json(c).find("pad_token_id"), std::string::npos);
  EXPECT_TRUE(c.qkv_bias);
}

TEST(ModelConfig, PadTokenIdIsReadCheckedAndSettable) {
  const ModelConfig c = model_config_from_hf_json(R"({"model_type": "qwen2", "vocab_size": 512,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "pad_token_id": 5})", "p.json");
  EXPECT_EQ(c.pad_token_id, 5);
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"model_type": "qwen2", "vocab_size": 512,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "pad_token_id": 512})", "p.json"), "pad_token_id (512)", "p.json");
  ModelConfig d = tiny_dense();
  model_config_set(&d, "pad_token_id", "9");
  EXPECT_EQ(d.pad_token_id, 9);
}

TEST(ModelConfig, ParsesHfQwen2MoeJsonWithHfDefaults) {
  const ModelConfig full = model_config_from_hf_json(R"({
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
    "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "norm_topk_prob": false,
    "decoder_sparse_step": 1, "router_aux_loss_coef": 0.001, "output_router_logits": false,
    "rope_theta": 1000000.0, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"})",
                                                     "moe.json");
  EXPECT_EQ(full.num_experts, 60);
  EXPECT_EQ(full.moe_intermediate_size, 1408);
  EXPECT_EQ(full.num_sparse_layers(), 24);

  // Only the required fields: MoE fields take Qwen2MoeConfig's defaults.
  const ModelConfig c = model_config_from_hf_json(R"({"model_type": "qwen2_moe",
    "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0},
    "head_dim": 32, "qkv_bias": false, "dtype": "float32", "mlp_only_layers": null})", "m.json");
  EXPECT_EQ(c.num_experts, 60);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.shared_expert_intermediate_size, 5632);
  EXPECT_EQ(c.intermediate_size, 5632);
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.router_aux_loss_coef, 0.001);
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_DOUBLE_EQ(c.rope_theta, 5000.0);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.head_size(), 32);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.torch_dtype, "float32");
}

TEST(ModelConfig, HfJsonErrors) {
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"model_type": "llama", "hidden_size": 8})", "x.json"),
                   "llama", "x.json");
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"model_type": "qwen2", "vocab_size": 10,
    "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 8})", "x.json"),
                   "hidden_size", "x.json");
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"model_type": "qwen2", "vocab_size": 10,
    "hidden_size": "big", "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 8})", "x.json"), "hidden_size", "big", "x.json");
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json("{not json", "bad.json"), "bad.json");
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"hidden_size": 8})", "x.json"), "model_type");
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"model_type": "qwen2", "vocab_size": 10,
    "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 8,
    "rope_scaling": {"type": "yarn", "factor": 4.0}})", "x.json"), "rope_scaling", "yarn");
  // validate() failures carry the file name too.
  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"model_type": "qwen2", "vocab_size": 10,
    "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 3,
    "intermediate_size": 8})", "x.json"), "x.json", "num_attention_heads");
}

// Sizes from a config are bounded before anything loops over them or multiplies them (issue 14:
// 2^32 layers hung eval and cost; 2^58 vocab overflowed the parameter count; 2^62 head_dim
// crashed init). Each error names the field, the value and the range; a huge model whose fields
// are each within range is refused by the parameter-count bound.
TEST(ModelConfig, SizesAreBoundedBeforeUse) {
  // A small dense config.json with the given fields set to raw JSON value texts.
  auto with = [](std::map<std::string, std::string> fields) {
    std::map<std::string, std::string> f = {{"model_type", "\"qwen2\""}, {"vocab_size", "512"}, {"hidden_size", "64"},
                                            {"intermediate_size", "128"}, {"num_hidden_layers", "2"},
                                            {"num_attention_heads", "4"}};
    for (const auto& [k, v] : fields) f[k] = v;
    std::string text = "{";
    for (const auto& [k, v] : f) text += (text.size() > 1 ? ", \"" : "\"") + k + "\": " + v;
    return model_config_from_hf_json(text + "}", "c.json");
  };
  EXPECT_EQ(with({}).num_hidden_layers, 2);
  MOEKIT_EXPECT_ERROR_HAS(with({{"num_hidden_layers", "4294967296"}}), "c.json",
                          "num_hidden_layers (4294967296) is out of range [1, 4096]");
  MOEKIT_EXPECT_ERROR_HAS(with({{"vocab_size", "288230376151711744"}}), "c.json", "vocab_size (288230376151711744)");
  MOEKIT_EXPECT_ERROR_HAS(with({{"head_dim", "4611686018427387904"}}), "head_dim");
  MOEKIT_EXPECT_ERROR_HAS(with({{"hidden_size", "18446744073709551615"}}), "c.json",
                          "hidden_size = 18446744073709551615 is out of range");
  MOEKIT_EXPECT_ERROR_HAS(with({{"hidden_size", "1e400"}}), "c.json", "1e400", "at key 'hidden_size'");
  MOEKIT_EXPECT_ERROR_HAS(with({{"rope_theta", "1e400"}}), "c.json", "1e400", "at key 'rope_theta'");
  MOEKIT_EXPECT_ERROR_HAS(with({{"intermediate_size", "128, \"intermediate_size\": 64"}}), "c.json",
                          "duplicate key 'intermediate_size'");
  // Every field in range, but 4096 layers of 2^20-wide MLPs x 2^18 hidden: about 3e18 parameters.
  MOEKIT_EXPECT_ERROR_HAS(with({{"hidden_size", "262144"}, {"num_attention_heads", "4096"},
                                {"intermediate_size", "1048576"}, {"num_hidden_layers", "4096"}}),
                          "c.json", "more than moekit's limit of 17592186044416");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("model_type: qwen2\nvocab_size: 16777217\n", "m.yaml"), "m.yaml",
                          "vocab_size (16777217)");
}

const char* kQwenV1Json = R"({
  "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
  "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig"},
  "attn_dropout_prob": 0.0, "bf16": false, "emb_dropout_prob": 0.0, "fp16": false, "fp32": false,
  "hidden_size": 2048, "intermediate_size": 11008, "initializer_range": 0.02,
  "kv_channels": 128, "layer_norm_epsilon": 1e-06, "max_position_embeddings": 8192,
  "no_bias": true, "num_attention_heads": 16, "num_hidden_layers": 24, "onnx_safe": null,
  "rotary_emb_base": 10000, "rotary_pct": 1.0, "scale_attn_weights": true, "seq_length": 8192,
  "tie_word_embeddings": false, "tokenizer_class": "QWenTokenizer",
  "transformers_version": "4.32.0", "use_cache": true, "use_dynamic_ntk": true,
  "use_flash_attn": "auto", "use_logn_attn": true, "vocab_size": 151936})";

TEST(ModelConfig, ParsesQwenV1Json) {
  const ModelConfig c = model_config_from_hf_json(kQwenV1Json, "qwen1.json");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.intermediate_size, 5504);  // config 11008 is twice the MLP width
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 16);
  EXPECT_EQ(c.head_dim, 0);  // kv_channels 128 == 2048 / 16
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_EQ(c.vocab_size, 151936);

  // seq_length stands in for max_position_embeddings; kv_channels != hidden/heads -> head_dim.
  const ModelConfig d = model_config_from_hf_json(R"({"model_type": "qwen", "hidden_size": 64,
    "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 256,
    "vocab_size": 100, "kv_channels": 32, "seq_length": 512})", "q.json");
  EXPECT_EQ(d.intermediate_size, 128);
  EXPECT_EQ(d.head_dim, 32);
  EXPECT_EQ(d.max_position_embeddings, 512);

  MOEKIT_EXPECT_ERROR_HAS(model_config_from_hf_json(R"({"model_type": "qwen", "hidden_size": 64,
    "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 256,
    "vocab_size": 100, "rotary_pct": 0.5})", "q.json"), "rotary_pct", "q.json");
}

TEST(ModelConfig, HfJsonRoundTrip) {
  ModelConfig moe = tiny_moe();
  moe.mlp_only_layers = {0, 2};
  moe.decoder_sparse_step = 1;
  moe.norm_topk_prob = true;
  moe.output_router_logits = true;
  moe.head_dim = 32;  // explicit, != 64 / 4
  moe.rope_theta = 123456.5;
  moe.rms_norm_eps = 1e-5;
  moe.qkv_bias = false;
  moe.tie_word_embeddings = true;
  moe.pad_token_id = 3;
  const std::string text = model_config_to_hf_json(moe);
  EXPECT_NE(text.find("\"Qwen2MoeForCausalLM\""), std::string::npos);
  EXPECT_NE(text.find(std::string("\"transformers_version\": \"") + kTransformersVersion + "\""), std::string::npos);
  EXPECT_EQ(std::string(kTransformersVersion), "4.45.2");  // the pinned reference (setup-reference)
  EXPECT_NE(text.find("\"pad_token_id\": 3"), std::string::npos);
  EXPECT_NE(text.find("\"use_cache\": true"), std::string::npos);
  EXPECT_NE(text.find("\"output_router_logits\""), std::string::npos);
  EXPECT_NE(text.find("\"head_dim\": 32"), std::string::npos);
  expect_same(model_config_from_hf_json(text, "round-trip"), moe);

  for (const std::string name : {"tiny-dense", "qwen1.5-1.8b", "qwen1.5-7b"}) {
    SCOPED_TRACE(name);
    const ModelConfig dense = load_model_config(kModelsDir + "/" + name + ".yaml");
    const std::string t = model_config_to_hf_json(dense);
    EXPECT_NE(t.find("\"Qwen2ForCausalLM\""), std::string::npos);
    EXPECT_EQ(t.find("num_experts"), std::string::npos);
    EXPECT_EQ(t.find("head_dim"), std::string::npos);
    expect_same(model_config_from_hf_json(t, "round-trip"), dense);
  }
  // The gate flag is not an HF field: absent while true (HF's config.json stays as is),
  // written and read back when false.
  EXPECT_EQ(text.find("shared_expert_gate"), std::string::npos);
  ModelConfig ungated = tiny_moe();
  ungated.shared_expert_gate = false;
  const std::string ungated_text = model_config_to_hf_json(ungated);
  EXPECT_NE(ungated_text.find("\"shared_expert_gate\": false"), std::string::npos);
  expect_same(model_config_from_hf_json(ungated_text, "round-trip"), ungated);

  for (const std::string name : {"qwen1.5-moe-a2.7b", "bench-moe", "deepseek-moe-16b"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = load_model_config(kModelsDir + "/" + name + ".yaml");
    expect_same(model_config_from_hf_json(model_config_to_hf_json(c), "round-trip"), c);
  }
}

// ---- load_model_config -----------------------------------------------------------------------

TEST(ModelConfig, LoadsFromPathsOfEveryKind) {
  TempDir dir;
  const ModelConfig moe = tiny_moe();
  const std::string json_path = dir.write("config.json", model_config_to_hf_json(moe));
  expect_same(load_model_config(json_path), moe);
  expect_same(load_model_config(dir.path.string()), moe);  // directory -> DIR/config.json

  const std::string yml = dir.write("m.yml", "model_type: qwen2\nhidden_size: 64\n"
                                             "num_attention_heads: 4\nnum_key_value_heads: 4\n");
  EXPECT_EQ(load_model_config(yml).hidden_size, 64);

  MOEKIT_EXPECT_ERROR_HAS(load_model_config((dir.path / "missing.yaml").string()), "missing.yaml");
  fs::create_directories(dir.path / "empty_ckpt");
  MOEKIT_EXPECT_ERROR_HAS(load_model_config((dir.path / "empty_ckpt").string()), "empty_ckpt",
                   "config.json");
  const std::string bad = dir.write("bad.yaml", "hidden_size: [1, 2\n");
  MOEKIT_EXPECT_ERROR_HAS(load_model_config(bad), "bad.yaml");
  const std::string txt = dir.write("m.txt", "hidden_size: 64\n");
  MOEKIT_EXPECT_ERROR_HAS(load_model_config(txt), "m.txt");
}

// ---- YAML errors -----------------------------------------------------------------------------

TEST(ModelConfig, YamlUnknownKeyIsNamed) {
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("hidden_size: 64\nnum_expert: 8\n", "cfg.yaml"), "num_expert",
                   "cfg.yaml");
}

TEST(ModelConfig, YamlWrongTypesAreNamed) {
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("hidden_size: abc\n", "cfg.yaml"), "hidden_size", "abc",
                   "cfg.yaml");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("hidden_size: 64.5\n", "cfg.yaml"), "hidden_size", "64.5");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("rope_theta: fast\n", "cfg.yaml"), "rope_theta", "fast");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("tie_word_embeddings: maybe\n", "cfg.yaml"),
                   "tie_word_embeddings", "maybe");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("mlp_only_layers: 3\n", "cfg.yaml"), "mlp_only_layers");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("mlp_only_layers: [1, x]\n", "cfg.yaml"), "mlp_only_layers", "x");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("hidden_size: [64]\n", "cfg.yaml"), "hidden_size");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("hidden_size:\n", "cfg.yaml"), "hidden_size");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("hidden_size: 64\nhidden_size: 32\n", "cfg.yaml"),
                   "hidden_size", "twice");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("- 1\n- 2\n", "cfg.yaml"), "cfg.yaml");
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("", "cfg.yaml"), "cfg.yaml");
}

TEST(ModelConfig, YamlValidateErrorNamesFile) {
  MOEKIT_EXPECT_ERROR_HAS(from_yaml_text("hidden_size: 65\n", "cfg.yaml"), "cfg.yaml", "hidden_size");
}

// ---- validate() rules --------------------------------------------------------------------------

// Applies `edit` to a valid config and expects validate() to fail naming every `parts`.
void expect_invalid(ModelConfig base, const std::function<void(ModelConfig&)>& edit,
                    std::initializer_list<const char*> parts) {
  base.validate();  // the starting point itself is valid
  edit(base);
  const std::string msg = test::error_of([&] { base.validate(); });
  for (const char* p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
}

TEST(ModelConfig, ValidateRejectsNonPositiveSizes) {
  const ModelConfig d = tiny_dense();
  expect_invalid(d, [](ModelConfig& c) { c.vocab_size = 0; }, {"vocab_size", "0"});
  expect_invalid(d, [](ModelConfig& c) { c.hidden_size = -64; }, {"hidden_size", "-64"});
  expect_invalid(d, [](ModelConfig& c) { c.num_hidden_layers = 0; }, {"num_hidden_layers"});
  expect_invalid(d, [](ModelConfig& c) { c.num_attention_heads = 0; }, {"num_attention_heads"});
  expect_invalid(d, [](ModelConfig& c) { c.num_key_value_heads = 0; }, {"num_key_value_heads"});
  expect_invalid(d, [](ModelConfig& c) { c.max_position_embeddings = 0; },
                 {"max_position_embeddings"});
  expect_invalid(d, [](ModelConfig& c) { c.head_dim = -2; }, {"head_dim", "-2"});
  expect_invalid(d, [](ModelConfig& c) { c.intermediate_size = 0; }, {"intermediate_size"});
}

TEST(ModelConfig, ValidateRejectsBadAttentionShapes) {
  const ModelConfig d = tiny_dense();
  expect_invalid(d, [](ModelConfig& c) { c.hidden_size = 66; },
                 {"hidden_size", "66", "num_attention_heads", "4"});
  // An explicit head_dim lifts the divisibility rule.
  ModelConfig ok = d;
  ok.hidden_size = 66;
  ok.head_dim = 16;
  EXPECT_NO_THROW(ok.validate());
  expect_invalid(d, [](ModelConfig& c) { c.num_key_value_heads = 3; },
                 {"num_attention_heads", "num_key_value_heads", "3"});
  expect_invalid(d, [](ModelConfig& c) { c.num_key_value_heads = 8; },
                 {"num_attention_heads", "num_key_value_heads", "8"});
  expect_invalid(d, [](ModelConfig& c) { c.head_dim = 15; }, {"head_dim", "15", "even"});
  expect_invalid(d, [](ModelConfig& c) {  // implied head size 36 / 4 = 9
    c.hidden_size = 36;
  }, {"head_dim", "9", "hidden_size"});
}

TEST(ModelConfig, ValidateRejectsBadScalars) {
  const ModelConfig d = tiny_dense();
  expect_invalid(d, [](ModelConfig& c) { c.rms_norm_eps = 0; }, {"rms_norm_eps"});
  expect_invalid(d, [](ModelConfig& c) { c.rope_theta = -1; }, {"rope_theta", "-1"});
  expect_invalid(d, [](ModelConfig& c) { c.hidden_act = "gelu"; }, {"hidden_act", "gelu"});
  expect_invalid(d, [](ModelConfig& c) { c.model_type = "llama"; }, {"model_type", "llama"});
  expect_invalid(d, [](ModelConfig& c) { c.use_sliding_window = true; },
                 {"use_sliding_window", "not supported"});
  expect_invalid(d, [](ModelConfig& c) { c.torch_dtype = "int8"; }, {"torch_dtype", "int8"});
}

TEST(ModelConfig, ValidateRejectsBadMoeFields) {
  const ModelConfig m = tiny_moe();
  expect_invalid(m, [](ModelConfig& c) { c.num_experts = 0; }, {"num_experts", "0"});
  expect_invalid(m, [](ModelConfig& c) { c.num_experts_per_tok = 0; }, {"num_experts_per_tok"});
  expect_invalid(m, [](ModelConfig& c) { c.num_experts_per_tok = 9; },
                 {"num_experts_per_tok", "9", "num_experts", "8"});
  expect_invalid(m, [](ModelConfig& c) { c.moe_intermediate_size = 0; },
                 {"moe_intermediate_size"});
  expect_invalid(m, [](ModelConfig& c) { c.shared_expert_intermediate_size = -1; },
                 {"shared_expert_intermediate_size", "-1"});
  expect_invalid(m, [](ModelConfig& c) { c.decoder_sparse_step = 0; }, {"decoder_sparse_step"});
  expect_invalid(m, [](ModelConfig& c) { c.mlp_only_layers = {4}; },
                 {"mlp_only_layers", "4", "num_hidden_layers"});
  expect_invalid(m, [](ModelConfig& c) { c.mlp_only_layers = {-1}; }, {"mlp_only_layers", "-1"});
  expect_invalid(m, [](ModelConfig& c) { c.mlp_only_layers = {1, 1}; },
                 {"mlp_only_layers", "1", "twice"});
  expect_invalid(m, [](ModelConfig& c) { c.router_aux_loss_coef = -0.1; },
                 {"router_aux_loss_coef"});
  expect_invalid(m, [](ModelConfig& c) {
    c.shared_expert_intermediate_size = 0;
    c.shared_expert_gate = false;
  }, {"shared_expert_gate", "shared_expert_intermediate_size"});
  // No shared expert is allowed.
  ModelConfig no_shared = m;
  no_shared.shared_expert_intermediate_size = 0;
  EXPECT_NO_THROW(no_shared.validate());
}

TEST(ModelConfig, ValidateIntermediateSizeOnlyWhenADenseLayerExists) {
  ModelConfig m = tiny_moe();
  m.intermediate_size = 0;
  EXPECT_NO_THROW(m.validate());  // every layer sparse: the dense width is never used
  expect_invalid(tiny_moe(), [](ModelConfig& c) {
    c.intermediate_size = 0;
    c.mlp_only_layers = {2};
  }, {"intermediate_size", "mlp_only_layers"});
  expect_invalid(tiny_moe(), [](ModelConfig& c) {
    c.intermediate_size = 0;
    c.decoder_sparse_step = 2;
  }, {"intermediate_size"});
}

// ---- sparse layer placement --------------------------------------------------------------------

TEST(ModelConfig, SparseLayerPlacementFollowsHfRule) {
  ModelConfig m = tiny_moe();  // 4 layers
  auto sparse = [&m] {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < m.num_hidden_layers; ++i)
      if (m.is_sparse_layer(i)) out.push_back(i);
    return out;
  };
  EXPECT_EQ(sparse(), (std::vector<int64_t>{0, 1, 2, 3}));
  m.decoder_sparse_step = 2;  // (i + 1) % 2 == 0
  EXPECT_EQ(sparse(), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(m.num_sparse_layers(), 2);
  m.mlp_only_layers = {1};
  EXPECT_EQ(sparse(), (std::vector<int64_t>{3}));
  EXPECT_EQ(m.num_sparse_layers(), 1);
  m.decoder_sparse_step = 1;
  EXPECT_EQ(sparse(), (std::vector<int64_t>{0, 2, 3}));
  m.decoder_sparse_step = 3;
  m.mlp_only_layers.clear();
  EXPECT_EQ(sparse(), (std::vector<int64_t>{2}));

  const ModelConfig d = tiny_dense();
  EXPECT_FALSE(d.is_sparse_layer(0));
  EXPECT_EQ(d.num_sparse_layers(), 0);
  ModelConfig no_experts = tiny_moe();
  no_experts.num_experts = 0;  // HF: num_experts 0 means no sparse layers
  EXPECT_EQ(no_experts.num_sparse_layers(), 0);
}

// ---- --set overrides ---------------------------------------------------------------------------

TEST(ModelConfig, SetOverridesFieldsWithTypeChecks) {
  ModelConfig c = tiny_moe();
  model_config_set(&c, "hidden_size", "128");
  EXPECT_EQ(c.hidden_size, 128);
  model_config_set(&c, "rope_theta", "1e6");
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  model_config_set(&c, "norm_topk_prob", "true");
  EXPECT_TRUE(c.norm_topk_prob);
  model_config_set(&c, "hidden_act", "silu");
  EXPECT_EQ(c.hidden_act, "silu");
  model_config_set(&c, "mlp_only_layers", "[1,3]");
  EXPECT_EQ(c.mlp_only_layers, (std::vector<int64_t>{1, 3}));
  model_config_set(&c, "mlp_only_layers", "0, 2");
  EXPECT_EQ(c.mlp_only_layers, (std::vector<int64_t>{0, 2}));
  model_config_set(&c, "mlp_only_layers", "");
  EXPECT_TRUE(c.mlp_only_layers.empty());
  model_config_set(&c, "mlp_only_layers", "[]");
  EXPECT_TRUE(c.mlp_only_layers.empty());

  MOEKIT_EXPECT_ERROR_HAS(model_config_set(&c, "hiden_size", "1"), "hiden_size");
  MOEKIT_EXPECT_ERROR_HAS(model_config_set(&c, "hidden_size", "abc"), "hidden_size", "abc");
  MOEKIT_EXPECT_ERROR_HAS(model_config_set(&c, "num_experts", "8.5"), "num_experts", "8.5");
  MOEKIT_EXPECT_ERROR_HAS(model_config_set(&c, "rms_norm_eps", "tiny"), "rms_norm_eps", "tiny");
  MOEKIT_EXPECT_ERROR_HAS(model_config_set(&c, "norm_topk_prob", "2"), "norm_topk_prob", "2");
  MOEKIT_EXPECT_ERROR_HAS(model_config_set(&c, "mlp_only_layers", "[1,a]"), "mlp_only_layers", "[1,a]");
  MOEKIT_EXPECT_ERROR_HAS(model_config_set(&c, "mlp_only_layers", "1,"), "mlp_only_layers");
  EXPECT_EQ(c.hidden_size, 128);  // failed overrides leave the field alone
}

// Run configs: counts bounded (errors name the key and the file), checkpoint.keep 0 accepted (it
// keeps every checkpoint, as docs/CHECKPOINTS.md says), duplicate keys refused at any depth, a
// --set value parsed with the same bounds as a file.
TEST(RunConfig, BoundsKeepZeroAndDuplicates) {
  const std::string src = MOEKIT_SOURCE_DIR;
  // The tiny run config with `sets` applied (its model path made absolute: tests run elsewhere).
  auto load = [&](std::vector<std::string> sets) {
    sets.insert(sets.begin(), "model=" + src + "/configs/models/tiny-dense.yaml");
    return load_run_config(src + "/configs/train/tiny-dense.yaml", sets);
  };
  EXPECT_EQ(load({"checkpoint.keep=0"}).checkpoint.keep, 0);
  MOEKIT_EXPECT_ERROR_HAS(load({"checkpoint.keep=-1"}), "tiny-dense.yaml", "checkpoint.keep must be in [0, ");
  MOEKIT_EXPECT_ERROR_HAS(load({"train.steps=2000000000000"}), "train.steps must be in [1, 1099511627776]");
  MOEKIT_EXPECT_ERROR_HAS(load({"train.micro_batch_size=4294967296"}), "train.micro_batch_size");
  MOEKIT_EXPECT_ERROR_HAS(load({"train.global_batch_size=1073741824", "train.micro_batch_size=1",
                                "train.steps=1099511627776"}),
                          "tokens of the run", "overflows");
  MOEKIT_EXPECT_ERROR_HAS(load({"seed=" + std::string(100, '[') + std::string(100, ']')}), "--set seed=", "nests deeper");
  const fs::path dup = fs::temp_directory_path() / ("moekit_dup_" + std::to_string(::getpid()) + ".yaml");
  std::ofstream(dup) << "model: m.yaml\ntrain:\n  steps: 3\n  seq_len: 16\n  steps: 4\n";
  MOEKIT_EXPECT_ERROR_HAS(load_run_config(dup.string()), dup.c_str(), "line 5", "duplicate key 'steps'",
                          "at key 'train.steps'");
  fs::remove(dup);
}

}  // namespace
}  // namespace moekit::config
