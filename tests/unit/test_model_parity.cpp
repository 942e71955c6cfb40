// The model against Hugging Face transformers: each fixture in tests/fixtures/<case> was made by
// tests/reference/gen_fixtures.py with transformers' own Qwen2ForCausalLM / Qwen2MoeForCausalLM
// (f32, eager attention): weights, input ids, logits, losses and the gradient of the
// backpropagated loss w.r.t. every parameter. The C++ model loads the same directory through
// the real HF loader and must match logits and losses to 1e-5 and every gradient to 1e-4
// (relative to the tensor's largest magnitude).
#include <gtest/gtest.h>

#include <filesystem>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "test_util.h"

namespace moekit {
namespace {

namespace fs = std::filesystem;
const std::string kFixtures = MOEKIT_FIXTURES_DIR;

float scalar(const checkpoint::SafetensorsFile& f, const std::string& name) { return f.read_f32(name, {})[0]; }

model::LossConfig loss_config(const checkpoint::SafetensorsFile& ref, const config::ModelConfig& cfg) {
  const auto& meta = ref.metadata();
  const std::string form = meta.at("loss_form");
  model::LossConfig lc;
  if (form == "ce") {
    lc.aux = model::AuxLossForm::kNone;
  } else if (form == "hf") {
    lc.aux = model::AuxLossForm::kHfPooled;
    lc.aux_coef = cfg.router_aux_loss_coef;
  } else if (form == "switch_z") {
    lc.aux = model::AuxLossForm::kSwitch;
    lc.aux_coef = std::stod(meta.at("aux_coef"));
    lc.z_coef = std::stod(meta.at("z_coef"));
  } else {
    ADD_FAILURE() << "unknown loss_form " << form;
  }
  return lc;
}

void check_case(const std::string& name, bool grads = true) {
  const std::string dir = kFixtures + "/" + name;
  ASSERT_TRUE(fs::exists(dir + "/ref.safetensors")) << dir;
  auto model = checkpoint::load_hf_model(dir);
  auto ref = checkpoint::SafetensorsFile::open(dir + "/ref.safetensors");
  const auto& cfg = model->config();
  HostTensor ids = ref.read("input_ids");
  ASSERT_EQ(ids.shape.size(), 2u);
  const int64_t B = ids.shape[0], S = ids.shape[1];
  std::vector<int64_t> inputs(ids.as<int64_t>(), ids.as<int64_t>() + B * S), targets(B * S, -1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s + 1 < S; ++s) targets[b * S + s] = inputs[b * S + s + 1];
  const model::LossConfig lc = loss_config(ref, cfg);
  model->params().zero_grad();
  // The logits of an evaluation forward (a training forward turns them into their gradient),
  // then the training forward whose losses and gradients are checked.
  model->forward(inputs.data(), targets.data(), B, S, lc, false);
  auto logits = ref.read_f32("logits", {B, S, cfg.vocab_size});
  EXPECT_LT(test::rel_err(model->logits().data(), logits.data(), logits.size()), 1e-5) << name << " logits";
  model::LossTerms out = model->forward(inputs.data(), targets.data(), B, S, lc, grads);
  auto rel = [](double a, double b) { return std::fabs(a - b) / std::max(1e-6, std::fabs(b)); };
  EXPECT_LT(rel(out.ce, scalar(ref, "loss")), 1e-5) << name << " loss " << out.ce << " vs " << scalar(ref, "loss");
  if (cfg.is_moe()) {
    EXPECT_LT(rel(out.aux_hf, scalar(ref, "aux_loss")), 1e-5) << name << " aux " << out.aux_hf;
    EXPECT_LT(rel(out.aux_switch, scalar(ref, "switch_loss")), 1e-5) << name << " switch " << out.aux_switch;
    EXPECT_LT(rel(out.z_loss, scalar(ref, "z_loss")), 1e-5) << name << " z " << out.z_loss;
  }
  EXPECT_LT(rel(out.total, scalar(ref, "total_loss")), 1e-5) << name << " total";
  if (!grads) return;
  model->backward();
  int checked = 0;
  for (const auto& spec : model->params().specs()) {
    const std::string gname = "grad." + spec.name;
    ASSERT_NE(ref.find(gname), nullptr) << name << ": fixture lacks " << gname;
    auto g = ref.read_f32(gname, spec.shape);
    const float* mine = model->params().grads(spec.expert) + spec.offset;
    EXPECT_LT(test::rel_err(mine, g.data(), g.size(), 1e-8), 1e-4) << name << " grad of " << spec.name;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(model->params().specs().size()));
}

TEST(HfParity, DenseMha) { check_case("dense_mha"); }
TEST(HfParity, DenseGqaTiedLongSequence) { check_case("dense_gqa_tied"); }
TEST(HfParity, MoeTopkUnnormalised) { check_case("moe_topk_false"); }
TEST(HfParity, MoeTopkNormalisedGqa) { check_case("moe_topk_true_gqa"); }
TEST(HfParity, MoeDenseLayerAmongSparseTiedLongSequence) { check_case("moe_mixed_tied"); }
TEST(HfParity, MoeSparseStepSwitchAndZLoss) { check_case("moe_sparse_step2"); }
TEST(HfParity, MoeBf16OnDisk) { check_case("moe_bf16"); }
TEST(HfParity, DenseF16OnDisk) { check_case("dense_f16"); }
TEST(HfParity, QwenV1LayoutMapsOntoQwen2) { check_case("qwen_v1", /*grads=*/false); }

// DeepSeekMoE-style ungated shared experts: the model builds without the gate parameter, but
// no HF Qwen2-MoE checkpoint can express it, so export refuses (and writes nothing).
TEST(HfParity, UngatedSharedExpertHasNoHfExport) {
  config::ModelConfig cfg = config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/tiny-moe.yaml");
  cfg.shared_expert_gate = false;
  model::Model m(cfg);
  EXPECT_FALSE(m.params().has("model.layers.0.mlp.shared_expert_gate.weight"));
  EXPECT_TRUE(m.params().has("model.layers.0.mlp.shared_expert.down_proj.weight"));
  const std::string out = (std::filesystem::temp_directory_path() / "moekit_ungated_export").string();
  std::filesystem::remove_all(out);
  try {
    checkpoint::save_hf_model(m, out, DType::kF32);
    ADD_FAILURE() << "export of an ungated shared expert did not fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shared_expert_gate"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(out));
}

}  // namespace
}  // namespace moekit
