// Helpers for the upcycle tests: a per-test temporary directory, tiny dense checkpoints with
// non-trivial weights, recipes from text, and reading tensors and plan arrays back.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "config/model_config.h"
#include "model/model.h"
#include "upcycle/recipe.h"
#include "upcycle/upcycler.h"

namespace moekit::upcycle::test {

namespace fs = std::filesystem;

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("moekit_up_" + std::string(info->test_suite_name()) + "_" + info->name() +
                                        "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

// configs/models/tiny-dense.yaml with `sets` applied ("key=value").
inline config::ModelConfig tiny_dense_config(const std::vector<std::string>& sets = {}) {
  config::ModelConfig c = config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/tiny-dense.yaml");
  for (const auto& kv : sets) config::model_config_set(&c, kv.substr(0, kv.find('=')), kv.substr(kv.find('=') + 1));
  c.validate();
  return c;
}

// A dense checkpoint with weights ~ N(0, std): std 0.2 makes the MLPs matter, so a wrong
// expert changes the logits visibly.
inline void write_dense(const std::string& dir, const config::ModelConfig& cfg, DType dtype = DType::kF32,
                        double std = 0.2, uint64_t seed = 11, uint64_t max_shard_bytes = 5000000000ull) {
  model::Model m(cfg);
  m.params().init(seed, std);
  checkpoint::save_hf_model(m, dir, dtype, max_shard_bytes);
}

inline Recipe tiny_recipe(const std::vector<std::string>& sets = {}) {
  Recipe r = load_recipe(std::string(MOEKIT_SOURCE_DIR) + "/configs/upcycle/tiny.yaml");
  for (const auto& kv : sets) recipe_set(&r, kv);
  return r;
}

inline UpcycleSummary run_upcycle(const Recipe& r, const std::string& dense, const std::string& out, int threads = 2,
                                  bool overwrite = false) {
  UpcycleOptions o;
  o.dense_dir = dense;
  o.out_dir = out;
  o.threads = threads;
  o.overwrite = overwrite;
  return upcycle(r, o);
}

inline std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline nlohmann::json read_json(const std::string& p) { return nlohmann::json::parse(slurp(p)); }

inline std::vector<int32_t> read_i32(const checkpoint::SafetensorsFile& f, const std::string& name) {
  const HostTensor t = f.read(name);
  EXPECT_EQ(t.dtype, DType::kI32) << name;
  return std::vector<int32_t>(t.as<int32_t>(), t.as<int32_t>() + t.numel());
}

// Every regular file under `dir`, relative path -> bytes.
inline std::map<std::string, std::string> tree_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = slurp(e.path().string());
  return out;
}

// Entries of `dir` (names, hidden ones included).
inline std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace moekit::upcycle::test
