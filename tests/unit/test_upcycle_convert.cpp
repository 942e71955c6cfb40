// End-to-end tests of upcycle(): function preservation (copy and virtual_group modes, checked
// by running the CPU model on both checkpoints), byte-identical output for any thread count,
// Qwen v1 input equal to the same weights in the Qwen2 layout, sharded input and output, input
// and output dtypes, tied embeddings, tokenizer files, --overwrite, and every bad input the
// issue lists: each a named error with no output or staging directory left behind.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <cmath>
#include <csignal>
#include <cstdlib>

#include "core/check.h"
#include "upcycle/rng_stream.h"
#include "upcycle/verify.h"
#include "upcycle_test_util.h"

namespace moekit::upcycle {
namespace {

using test::TempDirTest;
namespace fs = std::filesystem;

template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> words) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << *words.begin();
  } catch (const Error& e) {
    for (const auto& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what() << " lacks " << w;
  }
}

class UpcycleConvert : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    test::write_dense(path("dense"), test::tiny_dense_config());
  }
  // After a failed run only the inputs may remain in the test directory.
  void expect_clean(std::vector<std::string> allowed) {
    std::sort(allowed.begin(), allowed.end());
    EXPECT_EQ(test::listing(dir_.string()), allowed);
  }
};

TEST_F(UpcycleConvert, FunctionPreservingModesReproduceTheDenseLogits) {
  const std::vector<std::vector<std::string>> cases = {
      {"mode=copy", "expert_intermediate_size=0", "num_shared_experts=0", "norm_topk_prob=true"},
      {"mode=copy", "expert_intermediate_size=0", "num_shared_experts=0", "router_init=zero"},
      {"mode=copy", "expert_intermediate_size=0", "num_shared_experts=2", "router_init=zero"},
      {"mode=virtual_group", "expert_intermediate_size=43", "num_experts=8", "num_experts_per_tok=4",
       "norm_topk_prob=true", "num_shared_experts=4"},
  };
  const std::vector<int64_t> toks = verify_tokens(3, 512, 48);
  for (size_t c = 0; c < cases.size(); ++c) {
    std::vector<std::string> sets = cases[c];
    sets.insert(sets.end(), {"reinit_ratio=0", "output_scaling=auto"});
    const std::string out = path("moe" + std::to_string(c));
    const UpcycleSummary s = test::run_upcycle(test::tiny_recipe(sets), path("dense"), out);
    EXPECT_TRUE(s.scales.function_preserving) << c;
    const VerifyResult v = verify_upcycle(path("dense"), out, toks);
    EXPECT_LT(v.max_abs_logit_diff, 2e-5) << "case " << c;
    EXPECT_LT(v.kl, 1e-10) << "case " << c;
    EXPECT_NEAR(v.moe_loss, v.dense_loss, 1e-5) << "case " << c;
    EXPECT_EQ(v.top1_agreement, 1.0);
  }
  // The qwen default is not function preserving, and the check sees it.
  test::run_upcycle(test::tiny_recipe(), path("dense"), path("qwen"));
  const VerifyResult q = verify_upcycle(path("dense"), path("qwen"), toks);
  EXPECT_GT(q.kl, 1e-4);
  EXPECT_GT(q.max_abs_logit_diff, 1e-2);
}

TEST_F(UpcycleConvert, OutputIsByteIdenticalForAnyThreadCountAndKernel) {
  const Recipe r = test::tiny_recipe({"dtype=bf16", "max_shard_size=300KB"});
  test::run_upcycle(r, path("dense"), path("t1"), 1);
  test::run_upcycle(r, path("dense"), path("t3"), 3);
  test::run_upcycle(r, path("dense"), path("t8"), 8);
  const auto a = test::tree_bytes(path("t1"));
  EXPECT_GT(a.size(), 6u);  // several shards + index + plan
  EXPECT_EQ(a, test::tree_bytes(path("t3")));
  EXPECT_EQ(a, test::tree_bytes(path("t8")));
  // Buffered writes instead of O_DIRECT: the same bytes.
  ::setenv("MOEKIT_DIRECT_IO", "0", 1);
  test::run_upcycle(r, path("dense"), path("buffered"), 2);
  ::unsetenv("MOEKIT_DIRECT_IO");
  EXPECT_EQ(a, test::tree_bytes(path("buffered")));
  // The AVX2 and scalar kernels (CPUs without AVX-512): the same bytes.
  for (const char* k : {"avx2", "scalar"}) {
    const KernelCap prev = set_kernel_cap(std::string(k) == "avx2" ? KernelCap::kAvx2 : KernelCap::kScalar);
    test::run_upcycle(r, path("dense"), path(k), 2);
    set_kernel_cap(prev);
    EXPECT_EQ(a, test::tree_bytes(path(k))) << k;
  }
  // A different seed changes the experts.
  test::run_upcycle(test::tiny_recipe({"dtype=bf16", "max_shard_size=300KB", "seed=5"}), path("dense"), path("s5"), 2);
  EXPECT_NE(a, test::tree_bytes(path("s5")));
}

TEST_F(UpcycleConvert, QwenV1InputGivesTheSameCheckpointAsQwen2Layout) {
  const std::string v1 = std::string(MOEKIT_FIXTURES_DIR) + "/qwen_v1";
  auto m = checkpoint::load_hf_model(v1);
  checkpoint::save_hf_model(*m, path("as_qwen2"), DType::kF32);
  // hidden 32, FFN 48: 6 routed + 2 shared experts of 16 from 3 shuffled copies.
  const Recipe r = test::tiny_recipe({"num_experts=6", "expert_intermediate_size=16", "num_shared_experts=2"});
  test::run_upcycle(r, v1, path("from_v1"));
  test::run_upcycle(r, path("as_qwen2"), path("from_qwen2"));
  EXPECT_EQ(test::slurp(path("from_v1") + "/model.safetensors"), test::slurp(path("from_qwen2") + "/model.safetensors"));
  const nlohmann::json plan = test::read_json(path("from_v1") + "/upcycle/plan.json");
  EXPECT_EQ(plan["dense"]["layout"], "qwen-v1");
  // v1 carries rotary_emb_base 10000 into the MoE config.
  EXPECT_EQ(config::load_model_config(path("from_v1")).rope_theta, 10000.0);
}

TEST_F(UpcycleConvert, ShardedInputShardedOutputAndDtypes) {
  test::write_dense(path("dense_sharded"), test::tiny_dense_config(), DType::kF16, 0.2, 11, 100000);
  ASSERT_TRUE(fs::exists(path("dense_sharded") + "/model.safetensors.index.json"));
  const UpcycleSummary s =
      test::run_upcycle(test::tiny_recipe({"dtype=bf16", "max_shard_size=300KB"}), path("dense_sharded"), path("moe"));
  EXPECT_GT(s.shards, 2u);
  const nlohmann::json index = test::read_json(path("moe") + "/model.safetensors.index.json");
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), s.bytes);
  for (const auto& name : test::listing(path("moe"))) {
    if (name.find(".safetensors") == std::string::npos || name.find("index") != std::string::npos) continue;
    const auto f = checkpoint::SafetensorsFile::open(path("moe") + "/" + name);
    EXPECT_EQ(f.metadata().at("format"), "pt") << name;
    uint64_t bytes = 0;
    for (const auto& t : f.tensors()) {
      EXPECT_EQ(t.dtype, DType::kBF16) << t.name;
      bytes += t.nbytes();
    }
    EXPECT_LE(bytes, 300000u) << name;
  }
  // The output loads as a model; f16 weights widened then rounded to bf16 agree with a direct
  // bf16 rounding of the f16 source (attention weights are copied).
  auto m = checkpoint::load_hf_model(path("moe"));
  EXPECT_TRUE(m->config().is_moe());
  const auto src = checkpoint::SafetensorsDir::open(path("dense_sharded"));
  const auto out = checkpoint::SafetensorsDir::open(path("moe"));
  std::vector<float> a = src.read_f32("model.layers.1.self_attn.q_proj.weight");
  std::vector<uint16_t> b(a.size());
  from_f32(b.data(), DType::kBF16, a.data(), a.size());
  to_f32(a.data(), b.data(), DType::kBF16, a.size());
  EXPECT_EQ(out.read_f32("model.layers.1.self_attn.q_proj.weight"), a);
  const config::ModelConfig c = config::load_model_config(path("moe"));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  // fp16 output.
  test::run_upcycle(test::tiny_recipe({"dtype=fp16"}), path("dense"), path("moe16"));
  EXPECT_EQ(checkpoint::SafetensorsDir::open(path("moe16")).info("model.embed_tokens.weight").dtype, DType::kF16);
}

TEST_F(UpcycleConvert, TiedEmbeddingsSideFilesAndOverwrite) {
  test::write_dense(path("tied"), test::tiny_dense_config({"tie_word_embeddings=true"}));
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"})
    std::ofstream(path("tied") + "/" + f) << "{\"fake\": \"" << f << "\"}";
  std::ofstream(path("tied") + "/generation_config.json") << "{\"eos_token_id\": [1, 2], \"pad_token_id\": 2}";
  test::run_upcycle(test::tiny_recipe(), path("tied"), path("moe"));
  const auto out = checkpoint::SafetensorsDir::open(path("moe"));
  EXPECT_FALSE(out.has("lm_head.weight"));
  EXPECT_TRUE(config::load_model_config(path("moe")).tie_word_embeddings);
  EXPECT_EQ(config::load_model_config(path("moe")).pad_token_id, 2);  // from the carried generation config
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json"})
    EXPECT_EQ(test::slurp(path("moe") + "/" + f), test::slurp(path("tied") + "/" + f)) << f;
  // An existing output is refused, then replaced with --overwrite.
  expect_error([&] { test::run_upcycle(test::tiny_recipe(), path("dense"), path("moe")); },
               {path("moe"), "already exists", "--overwrite"});
  EXPECT_TRUE(fs::exists(path("moe") + "/tokenizer.json"));
  test::run_upcycle(test::tiny_recipe(), path("dense"), path("moe"), 2, /*overwrite=*/true);
  EXPECT_FALSE(fs::exists(path("moe") + "/tokenizer.json"));
  EXPECT_TRUE(checkpoint::SafetensorsDir::open(path("moe")).has("lm_head.weight"));
  expect_clean({"dense", "moe", "tied"});
}

TEST_F(UpcycleConvert, BadInputIsNamedAndLeavesNothingBehind) {
  const Recipe r = test::tiny_recipe();
  auto copy_dense = [&](const std::string& name) {
    fs::copy(path("dense"), path(name), fs::copy_options::recursive);
    return path(name);
  };
  auto rewrite = [&](const std::string& dir, const std::string& drop, const Shape& reshape, DType retype) {
    // Rewrites model.safetensors without `drop`, with `reshape` for model.norm.weight, or
    // with embed_tokens stored as `retype`.
    const auto f = checkpoint::SafetensorsFile::open(dir + "/model.safetensors");
    std::vector<HostTensor> keep;
    std::vector<checkpoint::TensorRef> refs;
    keep.reserve(f.tensors().size());
    for (const auto& t : f.tensors()) {
      if (t.name == drop) continue;
      keep.push_back(f.read(t.name));
      Shape shape = t.shape;
      DType dt = t.dtype;
      if (t.name == "model.norm.weight" && !reshape.empty()) shape = reshape;
      if (t.name == "model.embed_tokens.weight" && retype != t.dtype) dt = retype;  // same bytes, I32
      refs.push_back({t.name, dt, shape, keep.back().storage.data()});
    }
    checkpoint::write_safetensors(dir + "/model.safetensors", refs);
  };
  rewrite(copy_dense("missing"), "model.layers.2.mlp.up_proj.weight", {}, DType::kF32);
  expect_error([&] { test::run_upcycle(r, path("missing"), path("o1")); },
               {"missing tensor 'model.layers.2.mlp.up_proj.weight'"});
  rewrite(copy_dense("shape"), "", {32, 2}, DType::kF32);
  expect_error([&] { test::run_upcycle(r, path("shape"), path("o2")); }, {"model.norm.weight", "[32, 2]", "[64]"});
  rewrite(copy_dense("dtype"), "", {}, DType::kI32);
  expect_error([&] { test::run_upcycle(r, path("dtype"), path("o3")); }, {"model.embed_tokens.weight", "I32"});
  // Not a Qwen model; an MoE checkpoint; a missing directory; no config.json.
  copy_dense("llama");
  std::ofstream(path("llama") + "/config.json") << R"({"model_type": "llama", "hidden_size": 64})";
  expect_error([&] { test::run_upcycle(r, path("llama"), path("o4")); }, {"llama", "not supported"});
  test::run_upcycle(r, path("dense"), path("moe_in"));
  expect_error([&] { test::run_upcycle(r, path("moe_in"), path("o5")); }, {"qwen2_moe", "dense"});
  expect_error([&] { test::run_upcycle(r, path("nope"), path("o6")); }, {path("nope"), "does not exist"});
  copy_dense("nocfg");
  fs::remove(path("nocfg") + "/config.json");
  expect_error([&] { test::run_upcycle(r, path("nocfg"), path("o7")); }, {"config.json"});
  // An extra tensor (e.g. from a different architecture).
  auto extra = copy_dense("extra");
  {
    const auto f = checkpoint::SafetensorsFile::open(extra + "/model.safetensors");
    std::vector<HostTensor> keep;
    std::vector<checkpoint::TensorRef> refs;
    keep.reserve(f.tensors().size() + 1);
    for (const auto& t : f.tensors()) {
      keep.push_back(f.read(t.name));
      refs.push_back({t.name, t.dtype, t.shape, keep.back().storage.data()});
    }
    const float one = 1.f;
    refs.push_back({"model.layers.0.mlp.experts.0.up_proj.weight", DType::kF32, {1}, &one});
    checkpoint::write_safetensors(extra + "/model.safetensors", refs);
  }
  expect_error([&] { test::run_upcycle(r, path("extra"), path("o8")); }, {"unexpected tensor 'model.layers.0.mlp.experts.0.up_proj.weight'"});
  // Inconsistent recipe (caught after reading the dense config, before any output).
  expect_error([&] { test::run_upcycle(test::tiny_recipe({"num_experts_per_tok=9"}), path("dense"), path("o9")); },
               {"num_experts_per_tok (9)"});
  // The output may not replace the input or a directory holding it.
  expect_error([&] { test::run_upcycle(r, path("dense"), path("dense"), 2, true); }, {"would replace the dense checkpoint"});
  expect_error([&] { test::run_upcycle(r, path("dense"), dir_.string(), 2, true); }, {"would replace the dense checkpoint"});
  expect_error([&] { test::run_upcycle(r, path("dense"), path("no/such/parent")); }, {"parent directory"});
  expect_clean({"dense", "dtype", "extra", "llama", "missing", "moe_in", "nocfg", "shape"});
}

TEST_F(UpcycleConvert, FullDiskIsAnErrorAndTheStagingDirectoryIsRemoved) {
  // A file-size limit makes the reservation fail exactly as a full disk does (EFBIG vs ENOSPC).
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  struct rlimit lim = old;
  lim.rlim_cur = 200000;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  auto* prev = std::signal(SIGXFSZ, SIG_IGN);
  try {
    test::run_upcycle(test::tiny_recipe(), path("dense"), path("moe"));
    ADD_FAILURE() << "no error under a 200 KB file-size limit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("disk full or file size limit"), std::string::npos) << e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, prev);
  expect_clean({"dense"});
}

}  // namespace
}  // namespace moekit::upcycle
