// Tests of upcycle/plan: seeded permutations, the chunk -> (copy, dense neuron) map of each mode
// against a direct restatement of the Qwen2 report's procedure, shared chunk selection,
// neuron-mode counts and the output scaling factors of NVIDIA's granular upcycling.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "upcycle/plan.h"
#include "upcycle_test_util.h"

namespace moekit::upcycle {
namespace {

bool is_permutation_of_iota(std::vector<int32_t> p) {
  std::sort(p.begin(), p.end());
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] != static_cast<int32_t>(i)) return false;
  return true;
}

Recipe resolved(const std::vector<std::string>& sets, const config::ModelConfig& d) {
  Recipe r = test::tiny_recipe(sets);
  resolve_recipe(&r, d);
  return r;
}

TEST(UpcyclePlan, SeededPermutationIsAUniformPermutation) {
  const auto a = seeded_permutation(1, "s", 1000), b = seeded_permutation(1, "s", 1000);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(is_permutation_of_iota(a));
  EXPECT_NE(a, seeded_permutation(2, "s", 1000));
  EXPECT_NE(a, seeded_permutation(1, "t", 1000));
  // Where does element 0 land? Over 4000 streams each of 8 places should get ~500.
  std::vector<int> hist(8, 0);
  for (int s = 0; s < 4000; ++s) {
    const auto p = seeded_permutation(static_cast<uint64_t>(s), "u", 8);
    hist[static_cast<size_t>(std::find(p.begin(), p.end(), 0) - p.begin())]++;
  }
  for (int h : hist) EXPECT_NEAR(h, 500, 5 * std::sqrt(500.0 * 7 / 8)) << "position histogram";
  EXPECT_TRUE(seeded_permutation(1, "e", 0).empty());
  EXPECT_EQ(seeded_permutation(1, "e", 1), std::vector<int32_t>{0});
}

// The report's procedure restated directly: concatenate the C shuffled copies as (copy, index)
// pairs and cut n consecutive chunks of h_E.
TEST(UpcyclePlan, QwenChunksFollowTheReportProcedure) {
  const config::ModelConfig d = test::tiny_dense_config();
  for (const char* which : {"first", "last"}) {
    const Recipe r = resolved({std::string("shared_chunks=") + which}, d);
    const Geometry g = make_geometry(r, d);
    EXPECT_EQ(g.copies, 3);  // ceil(10 * 48 / 172)
    const LayerPlan p = make_layer_plan(r, g, 2);
    std::vector<std::pair<int32_t, int32_t>> concat;
    for (int64_t c = 0; c < g.copies; ++c) {
      const std::vector<int32_t> perm(p.perm.begin() + c * g.dense_width, p.perm.begin() + (c + 1) * g.dense_width);
      EXPECT_TRUE(is_permutation_of_iota(perm)) << "copy " << c;
      EXPECT_EQ(perm, seeded_permutation(r.seed, shuffle_stream_name(2, c), g.dense_width));
      for (int32_t v : perm) concat.emplace_back(static_cast<int32_t>(c), v);
    }
    const int64_t W = g.expert_width;
    const int64_t shared0 = std::string(which) == "first" ? 0 : g.routed;
    const int64_t routed0 = std::string(which) == "first" ? g.shared : 0;
    for (int64_t e = 0; e < g.routed; ++e)
      for (int64_t j = 0; j < W; ++j) {
        const auto& want = concat[static_cast<size_t>((routed0 + e) * W + j)];
        ASSERT_EQ(p.routed_copy[static_cast<size_t>(e * W + j)], want.first);
        ASSERT_EQ(p.routed_index[static_cast<size_t>(e * W + j)], want.second);
      }
    for (int64_t j = 0; j < g.shared_width(); ++j) {
      const auto& want = concat[static_cast<size_t>(shared0 * W + j)];
      ASSERT_EQ(p.shared_copy[static_cast<size_t>(j)], want.first);
      ASSERT_EQ(p.shared_index[static_cast<size_t>(j)], want.second);
    }
    // Within one copy, no dense neuron is used twice (each copy is a permutation).
    std::set<std::pair<int32_t, int32_t>> seen;
    for (size_t i = 0; i < p.routed_copy.size(); ++i) EXPECT_TRUE(seen.emplace(p.routed_copy[i], p.routed_index[i]).second);
    for (size_t i = 0; i < p.shared_copy.size(); ++i) EXPECT_TRUE(seen.emplace(p.shared_copy[i], p.shared_index[i]).second);
    // Layers get different shuffles.
    EXPECT_NE(p.perm, make_layer_plan(r, g, 3).perm);
  }
}

TEST(UpcyclePlan, CopyAndVirtualGroupLayouts) {
  const config::ModelConfig d = test::tiny_dense_config({"intermediate_size=172"});
  const Recipe c = resolved({"mode=copy", "expert_intermediate_size=0", "reinit_ratio=0", "output_scaling=auto"}, d);
  const Geometry gc = make_geometry(c, d);
  const LayerPlan pc = make_layer_plan(c, gc, 0);
  for (int64_t e = 0; e < gc.routed; ++e)
    for (int64_t j = 0; j < gc.expert_width; ++j) ASSERT_EQ(pc.routed_index[static_cast<size_t>(e * gc.expert_width + j)], j);
  // virtual_group, G = 172 / 43 = 4: routed expert e holds dense shard e mod 4 (Megatron layout).
  const Recipe v = resolved({"mode=virtual_group", "expert_intermediate_size=43", "num_experts=8",
                             "num_experts_per_tok=4", "num_shared_experts=4", "reinit_ratio=0", "output_scaling=auto"},
                            d);
  const Geometry gv = make_geometry(v, d);
  EXPECT_EQ(gv.granularity, 4);
  const LayerPlan pv = make_layer_plan(v, gv, 0);
  for (int64_t e = 0; e < gv.routed; ++e)
    for (int64_t j = 0; j < 43; ++j) ASSERT_EQ(pv.routed_index[static_cast<size_t>(e * 43 + j)], (e % 4) * 43 + j);
  for (int64_t j = 0; j < 172; ++j) ASSERT_EQ(pv.shared_index[static_cast<size_t>(j)], j);  // a whole FFN
}

TEST(UpcyclePlan, NeuronModeCountsAreExact) {
  const config::ModelConfig d = test::tiny_dense_config();
  const Recipe r = resolved({"reinit_mode=neuron", "reinit_ratio=0.25"}, d);
  const Geometry g = make_geometry(r, d);
  const LayerPlan p = make_layer_plan(r, g, 0);
  for (int64_t e = 0; e < g.routed; ++e)
    EXPECT_EQ(std::accumulate(p.routed_reinit.begin() + e * 48, p.routed_reinit.begin() + (e + 1) * 48, 0), 12);
  EXPECT_EQ(std::accumulate(p.shared_reinit.begin(), p.shared_reinit.end(), 0), 24);
  const Recipe keep = resolved({"reinit_mode=neuron", "reinit_ratio=0.25", "reinit_shared=false"}, d);
  const LayerPlan pk = make_layer_plan(keep, g, 0);
  EXPECT_EQ(std::accumulate(pk.shared_reinit.begin(), pk.shared_reinit.end(), 0), 0);
  // Element mode keeps no neuron flags.
  EXPECT_TRUE(make_layer_plan(resolved({}, d), g, 0).routed_reinit.empty());
}

TEST(UpcyclePlan, ScalingFactors) {
  const config::ModelConfig d = test::tiny_dense_config();
  auto scales = [&](const std::vector<std::string>& sets) {
    const Recipe r = resolved(sets, d);
    return output_scales(r, make_geometry(r, d));
  };
  const std::vector<std::string> copy = {"mode=copy", "expert_intermediate_size=0", "reinit_ratio=0",
                                         "output_scaling=auto", "num_shared_experts=0"};
  auto with = [](std::vector<std::string> v, std::initializer_list<const char*> more) {
    v.insert(v.end(), more.begin(), more.end());
    return v;
  };
  // copy, 8 experts top-2, no renormalisation: each expert weighs 1/8, two of them -> x 4.
  Scales s = scales(copy);
  EXPECT_DOUBLE_EQ(s.routed_down, 4.0);
  EXPECT_FALSE(s.function_preserving);  // random router: weights are not 1/8
  EXPECT_TRUE(scales(with(copy, {"router_init=zero"})).function_preserving);
  s = scales(with(copy, {"norm_topk_prob=true"}));
  EXPECT_DOUBLE_EQ(s.routed_down, 1.0);
  EXPECT_TRUE(s.function_preserving);
  // With 2 shared copies behind a zero gate: routed and shared each carry half.
  s = scales(with(copy, {"router_init=zero", "num_shared_experts=2"}));
  EXPECT_DOUBLE_EQ(s.routed_down, 2.0);
  EXPECT_DOUBLE_EQ(s.shared_down, 0.5);
  EXPECT_TRUE(s.function_preserving);
  EXPECT_FALSE(scales(with(copy, {"router_init=zero", "num_shared_experts=2", "shared_gate_init=normal"})).function_preserving);
  // virtual_group E=8, G=4, k=4: He et al. E G^2 / T in their notation = 8 * 4 / 4.
  const std::vector<std::string> vg = {"mode=virtual_group", "expert_intermediate_size=43", "num_experts=8",
                                       "num_experts_per_tok=4", "num_shared_experts=0", "reinit_ratio=0",
                                       "output_scaling=auto"};
  EXPECT_DOUBLE_EQ(scales(vg).routed_down, 8.0);
  EXPECT_FALSE(scales(vg).function_preserving);
  s = scales(with(vg, {"norm_topk_prob=true"}));
  EXPECT_DOUBLE_EQ(s.routed_down, 4.0);
  EXPECT_TRUE(s.function_preserving);
  s = scales(with(vg, {"output_scaling=nvidia"}));
  EXPECT_NEAR(s.routed_down, 2.0, 1e-12);  // cube root of 8
  EXPECT_NEAR(s.routed_gate_up, 2.0, 1e-12);
  EXPECT_FALSE(s.function_preserving);
  // Re-initialisation breaks preservation; a plain factor touches routed down only.
  EXPECT_FALSE(scales(with(copy, {"norm_topk_prob=true", "reinit_ratio=0.1"})).function_preserving);
  s = scales({"output_scaling=3"});
  EXPECT_DOUBLE_EQ(s.routed_down, 3.0);
  EXPECT_DOUBLE_EQ(s.shared_down, 1.0);
  EXPECT_DOUBLE_EQ(scales({}).routed_down, 1.0);
}

}  // namespace
}  // namespace moekit::upcycle
