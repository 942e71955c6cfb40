// Tests of upcycle/recipe: parsing of every key from the shipped recipes, --set, the YAML round
// trip, mode defaults, every inconsistency the validator must name, the output ModelConfig,
// and that every public key is documented (docs/UPCYCLE.md) and set in the A2.7B recipe.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "core/check.h"
#include "upcycle/plan.h"
#include "upcycle/recipe.h"
#include "upcycle_test_util.h"

namespace moekit::upcycle {
namespace {

const std::string kSrc = MOEKIT_SOURCE_DIR;

// The call must throw moekit::Error whose message contains every one of `words`.
template <typename F>
void expect_error(F&& f, std::initializer_list<const char*> words) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << *words.begin();
  } catch (const Error& e) {
    for (const char* w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what() << " lacks " << w;
  }
}

config::ModelConfig dense_1p8b() { return config::load_model_config(kSrc + "/configs/models/qwen1.5-1.8b.yaml"); }

TEST(UpcycleRecipe, A27bRecipeGivesQwenShapes) {
  Recipe r = load_recipe(kSrc + "/configs/upcycle/qwen1.5-moe-a2.7b.yaml");
  resolve_recipe(&r, dense_1p8b());
  const config::ModelConfig moe = moe_config(r, dense_1p8b());
  const config::ModelConfig ref = config::load_model_config(kSrc + "/configs/models/qwen1.5-moe-a2.7b.yaml");
  EXPECT_EQ(moe.model_type, "qwen2_moe");
  EXPECT_EQ(moe.num_experts, ref.num_experts);
  EXPECT_EQ(moe.num_experts_per_tok, ref.num_experts_per_tok);
  EXPECT_EQ(moe.moe_intermediate_size, ref.moe_intermediate_size);
  EXPECT_EQ(moe.shared_expert_intermediate_size, ref.shared_expert_intermediate_size);
  EXPECT_EQ(moe.norm_topk_prob, ref.norm_topk_prob);
  EXPECT_EQ(moe.router_aux_loss_coef, ref.router_aux_loss_coef);
  EXPECT_EQ(moe.num_sparse_layers(), 24);
  EXPECT_EQ(moe.intermediate_size, 5504);  // the dense width, for any mlp_only layer
  const Geometry g = make_geometry(r, dense_1p8b());
  EXPECT_EQ(g.copies, 17);  // ceil(64 * 1408 / 5504), mission-anchors A8
  EXPECT_EQ(g.copies * g.dense_width - g.chunks * g.expert_width, 3456);
  EXPECT_EQ(r.ratio(), 0.5);
}

TEST(UpcycleRecipe, EveryKeyIsSetInTheA27bRecipeAndDocumented) {
  const std::string yaml = test::slurp(kSrc + "/configs/upcycle/qwen1.5-moe-a2.7b.yaml");
  const std::string doc = test::slurp(kSrc + "/docs/UPCYCLE.md");
  ASSERT_FALSE(doc.empty()) << "docs/UPCYCLE.md missing";
  for (const std::string& k : recipe_keys()) {
    EXPECT_NE(yaml.find("\n" + k + ":"), std::string::npos) << k << " not in the A2.7B recipe";
    EXPECT_NE(doc.find("`" + k + "`"), std::string::npos) << k << " not documented in docs/UPCYCLE.md";
  }
}

TEST(UpcycleRecipe, YamlRoundTripAndSet) {
  Recipe r = test::tiny_recipe({"mode=virtual_group", "reinit_mode=neuron", "reinit_distribution=init",
                                "shared_chunks=last", "router_init=zero", "shared_gate_init=normal",
                                "output_scaling=2.5", "mlp_only_layers=[0, 3]", "decoder_sparse_step=2",
                                "seed=77", "dtype=bf16", "max_shard_size=2MB", "reinit_shared=false"});
  EXPECT_EQ(r.mode, UpcycleMode::kVirtualGroup);
  EXPECT_EQ(r.scaling(), Scaling::kFactor);
  EXPECT_EQ(r.output_scaling_factor, 2.5);
  EXPECT_EQ(r.mlp_only_layers, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(r.max_shard_size, 2000000u);
  EXPECT_EQ(r.dtype, DType::kBF16);
  const std::string y = recipe_to_yaml(r);
  const Recipe back = recipe_from_yaml_text(y, "roundtrip");
  EXPECT_EQ(recipe_to_yaml(back), y);
  for (const std::string& k : recipe_keys()) EXPECT_NE(y.find("\n" + k + ": "), std::string::npos) << k;
  // "virtual-group" is accepted as a spelling of the mode.
  recipe_set(&r, "mode=virtual-group");
  EXPECT_EQ(r.mode, UpcycleMode::kVirtualGroup);
}

TEST(UpcycleRecipe, ParseErrorsNameKeyAndSource) {
  expect_error([] { recipe_from_yaml_text("num_experts: 4\nfoo: 1\n", "r.yaml"); }, {"r.yaml", "unknown recipe key 'foo'"});
  expect_error([] { recipe_from_yaml_text("num_experts: 4\nnum_experts: 5\n", "r.yaml"); }, {"r.yaml", "duplicate key 'num_experts'"});
  expect_error([] { recipe_from_yaml_text("num_experts: four\n", "r.yaml"); }, {"num_experts", "'four'"});
  expect_error([] { recipe_from_yaml_text("reinit_ratio: 1.5\n", "r.yaml"); }, {"reinit_ratio", "[0, 1]"});
  expect_error([] { recipe_from_yaml_text("mode: sideways\n", "r.yaml"); }, {"mode", "qwen, copy, virtual_group", "sideways"});
  expect_error([] { recipe_from_yaml_text("dtype: int8\n", "r.yaml"); }, {"dtype", "int8"});
  expect_error([] { recipe_from_yaml_text("output_scaling: lots\n", "r.yaml"); }, {"output_scaling", "lots"});
  expect_error([] { recipe_from_yaml_text("output_scaling: -2\n", "r.yaml"); }, {"output_scaling", "positive"});
  expect_error([] { recipe_from_yaml_text("mlp_only_layers: 3\n", "r.yaml"); }, {"mlp_only_layers", "list"});
  expect_error([] { recipe_from_yaml_text("max_shard_size: 5XB\n", "r.yaml"); }, {"max_shard_size", "5XB"});
  expect_error([] { recipe_from_yaml_text("[1, 2]\n", "r.yaml"); }, {"r.yaml", "mapping"});
  expect_error([] { recipe_from_yaml_text("a: [1\n", "r.yaml"); }, {"r.yaml", "invalid YAML"});
  expect_error([] { recipe_from_yaml_text("", "r.yaml"); }, {"r.yaml", "empty"});
  expect_error([] { load_recipe("/nonexistent/recipe.yaml"); }, {"/nonexistent/recipe.yaml"});
  Recipe r;
  expect_error([&] { recipe_set(&r, "num_experts"); }, {"key=value"});
  expect_error([&] { recipe_set(&r, "bogus=1"); }, {"--set bogus=1", "unknown recipe key 'bogus'"});
  expect_error([&] { recipe_set(&r, "seed=-1"); }, {"seed", "-1"});
  EXPECT_EQ(parse_byte_size("5GB", "x"), 5000000000u);
  EXPECT_EQ(parse_byte_size("1 GiB", "x"), 1073741824u);
  EXPECT_EQ(parse_byte_size("1000", "x"), 1000u);
  EXPECT_EQ(parse_byte_size("0.5MB", "x"), 500000u);
}

TEST(UpcycleRecipe, ModeDefaults) {
  const config::ModelConfig d = dense_1p8b();
  Recipe q = recipe_from_yaml_text("num_experts: 60\nnum_experts_per_tok: 4\nexpert_intermediate_size: 1408\n", "q");
  resolve_recipe(&q, d);
  EXPECT_EQ(q.ratio(), 0.5);
  EXPECT_EQ(q.scaling(), Scaling::kNone);
  EXPECT_EQ(q.router_init_std, d.initializer_range);
  Recipe c = recipe_from_yaml_text("mode: copy\nnum_experts: 8\nnum_experts_per_tok: 2\n", "c");
  resolve_recipe(&c, d);
  EXPECT_EQ(c.expert_intermediate_size, 5504);
  EXPECT_EQ(c.ratio(), 0.0);
  EXPECT_EQ(c.scaling(), Scaling::kAuto);
  Recipe v = recipe_from_yaml_text(
      "mode: virtual_group\nnum_experts: 64\nnum_experts_per_tok: 8\nexpert_intermediate_size: 688\n", "v");
  resolve_recipe(&v, d);
  EXPECT_EQ(make_geometry(v, d).granularity, 8);
  EXPECT_EQ(v.ratio(), 0.0);
  EXPECT_EQ(v.scaling(), Scaling::kAuto);
}

TEST(UpcycleRecipe, InconsistentRecipesAreRefusedWithTheReason) {
  const config::ModelConfig d = dense_1p8b();
  auto resolve = [&](const std::string& text) {
    Recipe r = recipe_from_yaml_text(text, "bad.yaml");
    resolve_recipe(&r, d);
  };
  const std::string base = "num_experts: 60\nnum_experts_per_tok: 4\nexpert_intermediate_size: 1408\n";
  expect_error([&] { resolve("num_experts_per_tok: 4\nexpert_intermediate_size: 1408\n"); }, {"bad.yaml", "num_experts"});
  expect_error([&] { resolve("num_experts: 4\nexpert_intermediate_size: 1408\n"); }, {"num_experts_per_tok"});
  expect_error([&] { resolve("num_experts: 4\nnum_experts_per_tok: 5\nexpert_intermediate_size: 8\n"); },
               {"num_experts_per_tok (5)", "num_experts (4)"});
  expect_error([&] { resolve("num_experts: 4\nnum_experts_per_tok: 2\n"); }, {"expert_intermediate_size", "qwen"});
  expect_error([&] { resolve("mode: copy\nnum_experts: 4\nnum_experts_per_tok: 2\nexpert_intermediate_size: 1408\n"); },
               {"copy mode", "5504"});
  expect_error([&] { resolve("mode: virtual_group\nnum_experts: 8\nnum_experts_per_tok: 2\nexpert_intermediate_size: 1000\n"); },
               {"divide", "5504"});
  expect_error([&] { resolve("mode: virtual_group\nnum_experts: 6\nnum_experts_per_tok: 4\nexpert_intermediate_size: 1376\n"); },
               {"multiple of the granularity", "4"});
  expect_error([&] { resolve(base + "output_scaling: auto\n"); }, {"output_scaling 'auto'", "qwen"});
  expect_error([&] { resolve(base + "mlp_only_layers: [24]\n"); }, {"mlp_only_layers entry 24"});
  expect_error([&] { resolve(base + "mlp_only_layers: [3, 3]\n"); }, {"layer 3 twice"});
  expect_error([&] { resolve(base + "decoder_sparse_step: 25\n"); }, {"no layer would become an MoE layer"});
  config::ModelConfig moe = d;
  moe.model_type = "qwen2_moe";
  Recipe r = recipe_from_yaml_text(base, "bad.yaml");
  expect_error([&] { resolve_recipe(&r, moe); }, {"qwen2_moe", "dense"});
}

TEST(UpcycleRecipe, OutputConfigCarriesEveryMoeField) {
  const config::ModelConfig d = test::tiny_dense_config();
  Recipe r = test::tiny_recipe({"mlp_only_layers=[1]", "norm_topk_prob=true", "router_aux_loss_coef=0.02", "dtype=fp16"});
  resolve_recipe(&r, d);
  const config::ModelConfig m = moe_config(r, d);
  EXPECT_EQ(m.model_type, "qwen2_moe");
  EXPECT_EQ(m.num_experts, 8);
  EXPECT_EQ(m.num_experts_per_tok, 2);
  EXPECT_EQ(m.moe_intermediate_size, 48);
  EXPECT_EQ(m.shared_expert_intermediate_size, 96);
  EXPECT_TRUE(m.norm_topk_prob);
  EXPECT_EQ(m.mlp_only_layers, (std::vector<int64_t>{1}));
  EXPECT_EQ(m.router_aux_loss_coef, 0.02);
  EXPECT_EQ(m.torch_dtype, "float16");
  EXPECT_EQ(m.intermediate_size, d.intermediate_size);
  EXPECT_FALSE(m.is_sparse_layer(1));
  EXPECT_TRUE(m.is_sparse_layer(0));
  const std::string j = config::model_config_to_hf_json(m);
  for (const char* k : {"num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                        "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef",
                        "output_router_logits", "Qwen2MoeForCausalLM"})
    EXPECT_NE(j.find(k), std::string::npos) << k;
}

}  // namespace
}  // namespace moekit::upcycle
