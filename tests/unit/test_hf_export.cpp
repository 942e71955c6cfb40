// HF export side files and layouts that other tools depend on (issue 16): the generation config
// a run's HF source had is carried verbatim (its pad id reaching config.json), a generated one
// carries the model's ids and the pinned transformers version; a qkv_bias: false model is written
// with all-zero q/k/v biases (transformers 4.45.2 builds them whatever the config says) that read
// back as no bias, and a non-zero one under such a config is refused; models with dense layers
// are named as not convertible to llama.cpp's GGUF. The transformers side of each is checked
// against the real library in tests/e2e/ecosystem.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "config/model_config.h"
#include "core/check.h"
#include "model/model.h"
#include "test_util.h"

namespace moekit {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class HfExport : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moekit_hf_export_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static config::ModelConfig tiny(const char* name) {
    return config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/" + name + ".yaml");
  }
  static std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  static void spit(const std::string& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }
  fs::path dir_;
};

TEST_F(HfExport, GeneratedGenerationConfigCarriesTheModelIdsAndPinnedVersion) {
  config::ModelConfig cfg = tiny("tiny-dense");
  cfg.bos_token_id = 3;
  cfg.eos_token_id = 4;
  model::Model m(cfg);
  m.params().init(1, 0.02);
  checkpoint::save_hf_model(m, path("out"), DType::kF32);
  const json g = json::parse(slurp(path("out/generation_config.json")));
  EXPECT_EQ(g, (json{{"bos_token_id", 3}, {"eos_token_id", 4}, {"transformers_version", "4.45.2"}}));
  const json c = json::parse(slurp(path("out/config.json")));
  EXPECT_EQ(c["transformers_version"], config::kTransformersVersion);
  EXPECT_FALSE(c.contains("pad_token_id"));  // unknown: none written
  cfg.pad_token_id = 5;
  model::Model m2(cfg);
  m2.params().init(1, 0.02);
  checkpoint::save_hf_model(m2, path("out2"), DType::kF32);
  EXPECT_EQ(json::parse(slurp(path("out2/generation_config.json")))["pad_token_id"], 5);
  EXPECT_EQ(json::parse(slurp(path("out2/config.json")))["pad_token_id"], 5);
}

TEST_F(HfExport, SourceGenerationConfigIsCarriedVerbatimAndItsPadReachesConfigJson) {
  // Qwen1.5-MoE-A2.7B's generation config (reliability-ecosystem.md 2.4) plus sampling defaults.
  const std::string qwen = "{\n  \"bos_token_id\": 151643,\n  \"pad_token_id\": 151643,\n"
                           "  \"eos_token_id\": [151645, 151643],\n  \"top_p\": 0.8,\n  \"do_sample\": true,\n"
                           "  \"transformers_version\": \"4.39.0.dev0\"\n}\n";
  fs::create_directories(path("src"));
  spit(path("src/config.json"), R"({"model_type": "qwen2"})");
  spit(path("src/generation_config.json"), qwen);
  const std::string carried = checkpoint::source_generation_config(path("src"));
  EXPECT_EQ(carried, qwen);
  EXPECT_EQ(checkpoint::source_generation_config(""), "");
  EXPECT_EQ(checkpoint::source_generation_config(path("nowhere")), "");

  config::ModelConfig cfg = tiny("tiny-moe");
  cfg.vocab_size = 151936;
  model::Model m(cfg);
  m.params().init(1, 0.02);
  checkpoint::save_hf_model(m, path("out"), DType::kBF16, 5000000000ull, carried);
  EXPECT_EQ(slurp(path("out/generation_config.json")), qwen);  // byte for byte
  EXPECT_EQ(json::parse(slurp(path("out/config.json")))["pad_token_id"], 151643);
  EXPECT_EQ(config::load_model_config(path("out")).pad_token_id, 151643);
}

TEST_F(HfExport, QwenV1AndMalformedSourceGenerationConfigs) {
  // Qwen v1's file holds remote-code fields (chat_format, stop_words_ids): not carried.
  fs::create_directories(path("v1"));
  spit(path("v1/config.json"), R"({"model_type": "qwen"})");
  spit(path("v1/generation_config.json"), R"({"chat_format": "raw", "stop_words_ids": [[151643]]})");
  EXPECT_EQ(checkpoint::source_generation_config(path("v1")), "");
  // A model_type that is not a string is not Qwen v1 (and no nlohmann type_error naming no file).
  fs::create_directories(path("odd"));
  spit(path("odd/config.json"), R"({"model_type": 5})");
  spit(path("odd/generation_config.json"), R"({"do_sample": true})");
  EXPECT_EQ(checkpoint::source_generation_config(path("odd")), R"({"do_sample": true})");
  fs::create_directories(path("bad"));
  spit(path("bad/config.json"), R"({"model_type": "qwen2"})");
  spit(path("bad/generation_config.json"), "[1, 2]");
  MOEKIT_EXPECT_ERROR_HAS(checkpoint::source_generation_config(path("bad")), "bad/generation_config.json",
                          "not a JSON object");
  spit(path("bad/generation_config.json"), "[1, 2");
  MOEKIT_EXPECT_ERROR_HAS(checkpoint::source_generation_config(path("bad")), "bad/generation_config.json",
                          "not valid JSON");
}

TEST_F(HfExport, QkvBiasFalseIsWrittenWithZeroBiasesThatReadBackAsNone) {
  config::ModelConfig cfg = tiny("tiny-moe");
  cfg.qkv_bias = false;
  model::Model m(cfg);
  m.params().init(7, 0.02);
  checkpoint::save_hf_model(m, path("out"), DType::kBF16);
  const auto st = checkpoint::SafetensorsDir::open(path("out"));
  const int64_t qd = cfg.num_attention_heads * cfg.head_size(), kvd = cfg.num_key_value_heads * cfg.head_size();
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (const auto& [proj, rows] : {std::pair{"q", qd}, std::pair{"k", kvd}, std::pair{"v", kvd}}) {
      const std::string name = "model.layers." + std::to_string(l) + ".self_attn." + proj + "_proj.bias";
      ASSERT_TRUE(st.has(name)) << name;
      EXPECT_EQ(st.read_f32(name, Shape{rows}), std::vector<float>(static_cast<size_t>(rows), 0.0f)) << name;
    }
  EXPECT_FALSE(json::parse(slurp(path("out/config.json")))["qkv_bias"].get<bool>());
  // moekit reads the directory back as the same bias-free model.
  const auto back = checkpoint::load_hf_model(path("out"));
  EXPECT_FALSE(back->config().qkv_bias);
  EXPECT_FALSE(back->params().has("model.layers.0.self_attn.q_proj.bias"));
  std::vector<float> want = st.read_f32("model.layers.1.self_attn.k_proj.weight");
  const model::Param p = back->params().get("model.layers.1.self_attn.k_proj.weight");
  EXPECT_EQ(std::vector<float>(p.w, p.w + want.size()), want);

  // A directory whose config says qkv_bias false but whose biases are not zero is refused.
  config::ModelConfig with = tiny("tiny-moe");
  model::Model mb(with);
  mb.params().init(7, 0.02);
  mb.params().get("model.layers.2.self_attn.v_proj.bias").w[1] = 0.5f;
  checkpoint::save_hf_model(mb, path("nz"), DType::kF32);
  std::string text = slurp(path("nz/config.json"));
  const auto at = text.find("\"qkv_bias\": true");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 16, "\"qkv_bias\": false");
  spit(path("nz/config.json"), text);
  MOEKIT_EXPECT_ERROR_HAS(checkpoint::load_hf_model(path("nz")), "model.layers.2.self_attn.v_proj.bias",
                          "non-zero values (0.5 at 1)", "qkv_bias is false");
}

TEST_F(HfExport, DenseLayersAreNamedAsNotConvertibleToGguf) {
  config::ModelConfig cfg = tiny("tiny-moe");
  EXPECT_EQ(checkpoint::gguf_incompatibility(cfg), "");
  EXPECT_EQ(checkpoint::gguf_incompatibility(tiny("tiny-dense")), "");  // qwen2 is its own GGUF arch
  cfg.mlp_only_layers = {0, 2};
  const std::string why = checkpoint::gguf_incompatibility(cfg);
  EXPECT_NE(why.find("layers 0, 2 are dense"), std::string::npos) << why;
  EXPECT_NE(why.find("qwen2moe"), std::string::npos) << why;
  cfg.mlp_only_layers.clear();
  cfg.decoder_sparse_step = 2;  // layers 1 and 3 sparse
  EXPECT_NE(checkpoint::gguf_incompatibility(cfg).find("layers 0, 2 are dense"), std::string::npos);
  cfg.decoder_sparse_step = 1;
  cfg.mlp_only_layers = {3};
  EXPECT_NE(checkpoint::gguf_incompatibility(cfg).find("layer 3 is dense"), std::string::npos);
}

}  // namespace
}  // namespace moekit
