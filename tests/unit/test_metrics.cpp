// FLOP and parameter counts against the published Qwen figures and a hand count.
#include <gtest/gtest.h>

#include "config/model_config.h"
#include "model/model.h"
#include "train/metrics.h"

namespace moekit {
namespace {

const std::string kSrc = MOEKIT_SOURCE_DIR;

TEST(Metrics, PublishedQwenParameterCounts) {
  // Qwen1.5-MoE-A2.7B: 14.3B total, 2.7B activated, 2.0B activated non-embedding (model card, blog).
  auto moe = train::count_flops(config::load_model_config(kSrc + "/configs/models/qwen1.5-moe-a2.7b.yaml"), 2048);
  EXPECT_NEAR(moe.params_total / 1e9, 14.3, 0.05);
  EXPECT_NEAR(moe.params_active / 1e9, 2.7, 0.05);
  EXPECT_NEAR(moe.params_active_non_embedding / 1e9, 2.0, 0.1);
  auto d7 = train::count_flops(config::load_model_config(kSrc + "/configs/models/qwen1.5-7b.yaml"), 2048);
  EXPECT_NEAR(d7.params_total / 1e9, 7.7, 0.05);
  EXPECT_NEAR(d7.params_active_non_embedding / 1e9, 6.5, 0.05);
  auto d18 = train::count_flops(config::load_model_config(kSrc + "/configs/models/qwen1.5-1.8b.yaml"), 2048);
  EXPECT_NEAR(d18.params_total / 1e9, 1.84, 0.01);
}

TEST(Metrics, TotalParamsEqualTheModelsParameterCount) {
  for (const char* name : {"tiny-moe", "tiny-dense", "bench-moe"}) {
    auto cfg = config::load_model_config(kSrc + "/configs/models/" + name + ".yaml");
    model::ParamStore store;
    model::declare_model_params(cfg, &store);
    int64_t n = 0;
    for (const auto& s : store.specs()) n += s.numel();
    EXPECT_EQ(train::count_flops(cfg, 16).params_total, static_cast<double>(n)) << name;
  }
}

TEST(Metrics, FlopsByHandForATinyMoe) {
  config::ModelConfig c;
  c.model_type = "qwen2_moe";
  c.vocab_size = 10;
  c.hidden_size = 4;
  c.intermediate_size = 6;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 3;
  c.shared_expert_intermediate_size = 5;
  c.mlp_only_layers = {1};
  c.validate();
  auto f = train::count_flops(c, 8);
  // attention per layer: q 4*4+4, k 4*2+2, v 4*2+2, o 4*4, norms 2*4 = 64
  // layer 0 (sparse) active: 2 experts * 3*4*3 = 72, shared 3*4*5 = 60, router 16, gate 4 = 152
  // layer 1 (dense): 3*4*6 = 72 ; final norm 4
  const double active_ne = 64 * 2 + 152 + 72 + 4;
  EXPECT_EQ(f.params_active_non_embedding, active_ne);
  EXPECT_EQ(f.matmul_flops_per_token, 6 * (active_ne + 40));
  EXPECT_EQ(f.attention_flops_per_token, 6.0 * 2 * 2 * 8 * 4);
  EXPECT_EQ(f.params_total, 64 * 2 + (4 * 36 + 60 + 16 + 4) + 72 + 4 + 80);
}

TEST(Metrics, ExpertLoad) {
  train::ExpertLoad l{0, {10, 0, 30, 0}};
  EXPECT_DOUBLE_EQ(l.max_over_mean(), 3.0);
  EXPECT_EQ(l.dead(), 2);
  EXPECT_DOUBLE_EQ(l.fractions()[2], 0.75);
  EXPECT_EQ(train::format_duration(3725), "1h02m");
  EXPECT_EQ(train::format_duration(65), "1m05s");
}

}  // namespace
}  // namespace moekit
