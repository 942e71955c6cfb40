// Structural tests of a real upcycle (tiny model, f32 output so equality is exact): every
// expert element that was not re-initialised equals the dense element the plan names; the
// re-initialised fraction and its distribution match the recipe; the plan's permutations are
// permutations; gate, up and down stay aligned per neuron; the plan files agree with the
// checkpoint; dense parts are copied unchanged.
#include <gtest/gtest.h>

#include <cmath>

#include "upcycle/rng_stream.h"
#include "upcycle_test_util.h"

namespace moekit::upcycle {
namespace {

using test::TempDirTest;

class UpcycleStructure : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    dense_cfg_ = test::tiny_dense_config();
    test::write_dense(path("dense"), dense_cfg_);
  }
  // Reads every dense FFN tensor and expert tensor and checks the element rule.
  void check_elements(const std::string& out, const Recipe& r, bool neuron_mode) {
    const auto dense = checkpoint::SafetensorsDir::open(path("dense"));
    const auto moe = checkpoint::SafetensorsDir::open(out);
    const auto plan = checkpoint::SafetensorsFile::open(out + "/upcycle/plan.safetensors");
    const nlohmann::json pj = test::read_json(out + "/upcycle/plan.json");
    const int64_t H = dense_cfg_.hidden_size, D = dense_cfg_.intermediate_size, W = r.expert_intermediate_size;
    const double ratio = r.ratio();
    uint64_t total = 0, reinit = 0;
    double rsum = 0, rsq = 0;
    for (int64_t l = 0; l < dense_cfg_.num_hidden_layers; ++l) {
      const std::string lp = "model.layers." + std::to_string(l) + ".mlp.";
      const std::vector<float> dg = dense.read_f32(lp + "gate_proj.weight"), du = dense.read_f32(lp + "up_proj.weight"),
                               dd = dense.read_f32(lp + "down_proj.weight");
      const std::string pre = "layers." + std::to_string(l) + ".";
      const auto perm = test::read_i32(plan, pre + "perm");
      const int64_t copies = static_cast<int64_t>(perm.size()) / D;
      for (int64_t c = 0; c < copies; ++c) {
        std::vector<int32_t> p(perm.begin() + c * D, perm.begin() + (c + 1) * D);
        std::sort(p.begin(), p.end());
        for (int64_t i = 0; i < D; ++i) ASSERT_EQ(p[static_cast<size_t>(i)], i) << "layer " << l << " copy " << c;
      }
      const auto routed_idx = test::read_i32(plan, pre + "experts.source_index");
      const auto shared_idx = test::read_i32(plan, pre + "shared_expert.source_index");
      std::vector<int32_t> routed_flags, shared_flags;
      if (neuron_mode) {
        routed_flags = test::read_i32(plan, pre + "experts.reinit_neurons");
        shared_flags = test::read_i32(plan, pre + "shared_expert.reinit_neurons");
      }
      const auto& json_layer = pj["layers"][static_cast<size_t>(l)];
      for (int64_t e = 0; e <= r.num_experts; ++e) {
        const bool shared = e == r.num_experts;
        const int64_t w = shared ? r.num_shared_experts * W : W;
        const int32_t* src = shared ? shared_idx.data() : routed_idx.data() + e * W;
        const int32_t* flags = neuron_mode ? (shared ? shared_flags.data() : routed_flags.data() + e * W) : nullptr;
        const std::string ep = shared ? lp + "shared_expert." : lp + "experts." + std::to_string(e) + ".";
        const char* projs[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3; ++k) {
          const std::string name = ep + projs[k] + ".weight";
          const std::vector<float> x = moe.read_f32(name);
          ASSERT_EQ(static_cast<int64_t>(x.size()), w * H) << name;
          uint64_t count = 0;
          for (int64_t i = 0; i < w * H; ++i) {
            // Output element i: neuron j, hidden h (gate/up rows are neurons, down columns are).
            const int64_t j = k == 2 ? i % w : i / H, h = k == 2 ? i / w : i % H;
            const float want = k == 0 ? dg[static_cast<size_t>(src[j] * H + h)]
                             : k == 1 ? du[static_cast<size_t>(src[j] * H + h)]
                                      : dd[static_cast<size_t>(h * D + src[j])];
            const bool hit = neuron_mode ? flags[j] != 0 : element_reinit(r.seed, name, static_cast<uint64_t>(i), ratio);
            if (!hit) {
              ASSERT_EQ(x[static_cast<size_t>(i)], want) << name << " element " << i;
            } else {
              ++count;
              rsum += (x[static_cast<size_t>(i)] - 0.0);
              rsq += static_cast<double>(x[static_cast<size_t>(i)]) * x[static_cast<size_t>(i)];
            }
          }
          const auto& rec = shared ? json_layer["shared_reinit"] : json_layer["routed_reinit"][static_cast<size_t>(e)];
          EXPECT_EQ(rec[static_cast<size_t>(k)].get<uint64_t>(), count) << name << ": plan.json count";
          total += static_cast<uint64_t>(w * H);
          reinit += count;
        }
      }
    }
    const double frac = static_cast<double>(reinit) / static_cast<double>(total);
    if (neuron_mode) {
      EXPECT_NEAR(frac, std::round(ratio * W) / W, 1e-12);
    } else {
      EXPECT_NEAR(frac, ratio, 5 * std::sqrt(ratio * (1 - ratio) / static_cast<double>(total)) + 1e-12);
    }
    EXPECT_EQ(pj["reinit"]["total_reinitialised"].get<uint64_t>(), reinit);
    if (reinit > 0) {
      // Re-initialised values follow N(mean, std) of the dense tensors: here N(0, 0.2).
      const double m = rsum / static_cast<double>(reinit), sd = std::sqrt(rsq / static_cast<double>(reinit) - m * m);
      EXPECT_NEAR(m, 0.0, 0.01);
      EXPECT_NEAR(sd, 0.2, 0.01);
    }
  }
  config::ModelConfig dense_cfg_;
};

TEST_F(UpcycleStructure, ElementModeKeptElementsEqualTheirDenseSource) {
  const Recipe r = test::tiny_recipe();
  const UpcycleSummary s = test::run_upcycle(r, path("dense"), path("moe"));
  EXPECT_EQ(s.geometry.copies, 3);
  EXPECT_NEAR(static_cast<double>(s.reinit_elements) / s.expert_elements, 0.5, 0.01);
  check_elements(path("moe"), r, false);
}

TEST_F(UpcycleStructure, NeuronModeReinitialisesWholeNeurons) {
  Recipe r = test::tiny_recipe({"reinit_mode=neuron", "reinit_ratio=0.25", "shared_chunks=last"});
  test::run_upcycle(r, path("dense"), path("moe"));
  resolve_recipe(&r, dense_cfg_);
  check_elements(path("moe"), r, true);
}

TEST_F(UpcycleStructure, WithoutReinitGateUpDownStayAlignedPerNeuron) {
  // Ratio 0: every element equals its source, so each expert neuron's gate row, up row and
  // down column are exactly one dense neuron's — and the MoE neuron's contribution to a layer
  // output is that dense neuron's contribution.
  Recipe r = test::tiny_recipe({"reinit_ratio=0"});
  test::run_upcycle(r, path("dense"), path("moe"));
  resolve_recipe(&r, dense_cfg_);
  check_elements(path("moe"), r, false);
  const auto dense = checkpoint::SafetensorsDir::open(path("dense"));
  const auto moe = checkpoint::SafetensorsDir::open(path("moe"));
  const auto plan = checkpoint::SafetensorsFile::open(path("moe") + "/upcycle/plan.safetensors");
  const int64_t H = 64, D = 172, W = 48;
  const auto idx = test::read_i32(plan, "layers.1.experts.source_index");
  const auto g = dense.read_f32("model.layers.1.mlp.gate_proj.weight"), u = dense.read_f32("model.layers.1.mlp.up_proj.weight"),
             d = dense.read_f32("model.layers.1.mlp.down_proj.weight");
  std::vector<float> x(H);
  for (int64_t h = 0; h < H; ++h) x[static_cast<size_t>(h)] = std::sin(0.37f * h);
  auto neuron_out = [&](const float* gr, const float* ur, const float* dcol, int64_t stride, int64_t h) {
    float a = 0, b = 0;
    for (int64_t i = 0; i < H; ++i) {
      a += gr[i] * x[static_cast<size_t>(i)];
      b += ur[i] * x[static_cast<size_t>(i)];
    }
    return a / (1 + std::exp(-a)) * b * dcol[h * stride];
  };
  for (int64_t e = 0; e < 8; e += 3) {
    const std::string ep = "model.layers.1.mlp.experts." + std::to_string(e) + ".";
    const auto eg = moe.read_f32(ep + "gate_proj.weight"), eu = moe.read_f32(ep + "up_proj.weight"),
               ed = moe.read_f32(ep + "down_proj.weight");
    for (int64_t j = 0; j < W; j += 7) {
      const int64_t s = idx[static_cast<size_t>(e * W + j)];
      for (int64_t h = 0; h < H; h += 13)
        EXPECT_EQ(neuron_out(eg.data() + j * H, eu.data() + j * H, ed.data() + j, W, h),
                  neuron_out(g.data() + s * H, u.data() + s * H, d.data() + s, D, h));
    }
  }
}

TEST_F(UpcycleStructure, DenseTensorsAndRoutersAreAsSpecified) {
  const Recipe r = test::tiny_recipe({"mlp_only_layers=[2]", "router_init_std=0.05", "shared_gate_init=normal"});
  test::run_upcycle(r, path("dense"), path("moe"));
  const auto dense = checkpoint::SafetensorsDir::open(path("dense"));
  const auto moe = checkpoint::SafetensorsDir::open(path("moe"));
  // Attention, norms, embeddings, head and the dense layer's MLP: unchanged (f32 -> f32).
  for (const std::string& n : dense.names()) {
    if (n.find(".mlp.") != std::string::npos && n.find("layers.2.") == std::string::npos) continue;
    EXPECT_EQ(moe.read_f32(n), dense.read_f32(n)) << n;
  }
  EXPECT_FALSE(moe.has("model.layers.2.mlp.gate.weight"));
  EXPECT_FALSE(moe.has("model.layers.2.mlp.experts.0.up_proj.weight"));
  // Routers ~ N(0, 0.05) from the stream of their own name; shared gates N(0, 0.05).
  const std::vector<float> router = moe.read_f32("model.layers.0.mlp.gate.weight");
  std::vector<float> want(router.size());
  normal_elements(want.data(), want.size(), philox_key(r.seed, "model.layers.0.mlp.gate.weight"), 0, 0.f, 0.05f);
  EXPECT_EQ(router, want);
  EXPECT_NE(moe.read_f32("model.layers.0.mlp.shared_expert_gate.weight"), std::vector<float>(64, 0.f));
  // The model config says which layers are sparse.
  const config::ModelConfig c = config::load_model_config(path("moe"));
  EXPECT_EQ(c.mlp_only_layers, (std::vector<int64_t>{2}));
  EXPECT_EQ(c.num_sparse_layers(), 3);
}

TEST_F(UpcycleStructure, PlanJsonDescribesTheRun) {
  const Recipe r = test::tiny_recipe();
  test::run_upcycle(r, path("dense"), path("moe"));
  const nlohmann::json j = test::read_json(path("moe") + "/upcycle/plan.json");
  EXPECT_EQ(j["format"], "moekit-upcycle-plan");
  EXPECT_EQ(j["mode"], "qwen");
  EXPECT_EQ(j["geometry"]["copies"], 3);
  EXPECT_EQ(j["geometry"]["discarded_per_layer"], 3 * 172 - 10 * 48);
  EXPECT_EQ(j["reinit"]["threshold"].get<uint64_t>(), uint64_t{1} << 31);
  EXPECT_EQ(j["layers"].size(), 4u);
  EXPECT_NEAR(j["layers"][0]["dense_stats"]["gate_proj"]["std"].get<double>(), 0.2, 0.01);
  // recipe.yaml is the resolved recipe and reads back.
  const Recipe back = load_recipe(path("moe") + "/upcycle/recipe.yaml");
  EXPECT_EQ(back.ratio(), 0.5);
  EXPECT_EQ(back.seed, r.seed);
}

}  // namespace
}  // namespace moekit::upcycle
