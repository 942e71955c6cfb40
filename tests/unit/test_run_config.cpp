// RunConfig's data.eos_id (issue 16): the end-of-document token comes from the model config
// unless the run names one. `auto` (the default) resolves to the model's eos_token_id (Qwen's
// <|endoftext|> 151643 for a Qwen config, not token 0), `none` leaves documents as they are, a
// number is taken as given; the resolved value is what config.resolved.yaml records.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "config/run_config.h"
#include "core/check.h"
#include "data/indexed_dataset.h"
#include "data/loader.h"
#include "test_util.h"

namespace moekit::config {
namespace {

namespace fs = std::filesystem;

class RunConfigEos : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moekit_run_config_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // A run file on `model` with the given data section lines.
  std::string run_file(const std::string& model, const std::string& data_lines) {
    const std::string p = (dir_ / "run.yaml").string();
    std::ofstream(p) << "model: " << model << "\ndata:\n  train: [x]\n" << data_lines;
    return p;
  }
  fs::path dir_;
};

const std::string kModels = std::string(MOEKIT_SOURCE_DIR) + "/configs/models";

TEST_F(RunConfigEos, AutoIsTheModelsEosTokenId) {
  const RunConfig qwen = load_run_config(run_file(kModels + "/qwen1.5-moe-a2.7b.yaml", ""));
  EXPECT_EQ(qwen.data.eos_id, 151643);  // <|endoftext|>, what --append-eod ends documents with
  EXPECT_NE(run_config_to_yaml(qwen).find("eos_id: 151643"), std::string::npos);
  EXPECT_EQ(load_run_config(run_file(kModels + "/qwen1.5-moe-a2.7b.yaml", "  eos_id: auto\n")).data.eos_id, 151643);
  EXPECT_EQ(load_run_config(run_file(kModels + "/deepseek-moe-16b.yaml", "")).data.eos_id, 100001);
  EXPECT_EQ(load_run_config(run_file(kModels + "/tiny-moe.yaml", "")).data.eos_id, 0);  // its eos_token_id
}

// Qwen data preprocessed with Megatron's --append-eod ends every document with <|endoftext|>:
// with the resolved default the loader adds nothing; a document without it gets exactly one.
TEST_F(RunConfigEos, QwenDocumentsEndingWithEndoftextGetNoSecondOne) {
  const RunConfig cfg = load_run_config(run_file(kModels + "/qwen1.5-moe-a2.7b.yaml", ""));
  const std::string prefix = (dir_ / "qwen").string();
  data::IndexedDatasetWriter w(prefix, cfg.model_config.vocab_size);
  w.add_document({9707, 1879, 151643});  // "Hello world<|endoftext|>"
  w.add_document({21927, 151643});
  w.add_document({1879, 1879});          // no EOS: one is appended
  w.finish();
  data::LoaderConfig lc;
  lc.seq_len = 7;
  lc.global_batch = 1;
  lc.vocab_size = cfg.model_config.vocab_size;
  lc.shuffle = false;
  lc.eos_id = cfg.data.eos_id;
  data::Loader l(data::TokenDataset::open(prefix), lc);
  EXPECT_EQ(l.packed_length(0), 3);
  EXPECT_EQ(l.packed_length(1), 2);
  EXPECT_EQ(l.packed_length(2), 3);
  const data::Batch b = l.next_global_batch();
  std::vector<int64_t> window(b.inputs.begin(), b.inputs.end());
  window.push_back(b.targets.back());
  EXPECT_EQ(window, (std::vector<int64_t>{9707, 1879, 151643, 21927, 151643, 1879, 1879, 151643}));
}

TEST_F(RunConfigEos, NoneAndExplicitIds) {
  const RunConfig none = load_run_config(run_file(kModels + "/tiny-moe.yaml", "  eos_id: none\n"));
  EXPECT_EQ(none.data.eos_id, DataConfig::kEosNone);
  EXPECT_NE(run_config_to_yaml(none).find("eos_id: none"), std::string::npos);
  EXPECT_EQ(load_run_config(run_file(kModels + "/tiny-moe.yaml", "  eos_id: 7\n")).data.eos_id, 7);
  EXPECT_EQ(load_run_config(run_file(kModels + "/tiny-moe.yaml", ""), {"data.eos_id=9"}).data.eos_id, 9);
}

TEST_F(RunConfigEos, BadValuesAreNamed) {
  MOEKIT_EXPECT_ERROR_HAS(load_run_config(run_file(kModels + "/tiny-moe.yaml", "  eos_id: eos\n")),
                          "data.eos_id 'eos'", "auto", "none");
  MOEKIT_EXPECT_ERROR_HAS(load_run_config(run_file(kModels + "/tiny-moe.yaml", "  eos_id: -3\n")),
                          "data.eos_id '-3'");
  MOEKIT_EXPECT_ERROR_HAS(load_run_config(run_file(kModels + "/tiny-moe.yaml", "  eos_id: 512\n")),
                          "data.eos_id 512 is outside the vocabulary [0, 512)", "eos_token_id 0");
}

}  // namespace
}  // namespace moekit::config
