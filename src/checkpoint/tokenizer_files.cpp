// Tokenizer files for exports: copied from an HF source, generated from a qwen.tiktoken one.
#include "checkpoint/tokenizer_files.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "data/file_io.h"
#include "data/tokenizer.h"
#include "data/tokenizer_hf.h"

namespace moekit::checkpoint {

namespace {

namespace fs = std::filesystem;

constexpr const char* kHfFiles[] = {"tokenizer.json",          "tokenizer_config.json", "vocab.json", "merges.txt",
                                    "special_tokens_map.json", "added_tokens.json"};
constexpr uint64_t kMaxFileBytes = 512ull << 20;

std::string read_file(const fs::path& p) { return read_file_bounded(p.string(), kMaxFileBytes, "tokenizer file"); }

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// The .tiktoken file of a directory without HF files: qwen.tiktoken, else the only *.tiktoken.
fs::path tiktoken_in(const fs::path& dir) {
  if (is_file(dir / "qwen.tiktoken")) return dir / "qwen.tiktoken";
  std::error_code ec;
  fs::path found;
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".tiktoken") {
      found = e.path();
      ++n;
    }
  }
  return n == 1 ? found : fs::path();
}

bool has_tokenizer(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) &&
         (is_file(dir / "tokenizer.json") || is_file(dir / "vocab.json") || !tiktoken_in(dir).empty());
}

}  // namespace

ExportTokenizer ExportTokenizer::from_source(const std::string& source) {
  ExportTokenizer t;
  t.source_ = source;
  if (source.empty()) return t;
  fs::path dir(source), tiktoken;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    MOEKIT_CHECK(is_file(dir), "tokenizer source ", source, ": no such file or directory");
    if (dir.extension() == ".tiktoken") {
      tiktoken = dir;
    } else {
      const std::string name = dir.filename().string();
      MOEKIT_CHECK(name == "tokenizer.json" || name == "vocab.json" || name == "merges.txt", "tokenizer source ",
                   source, ": expected a directory, a *.tiktoken file, tokenizer.json or vocab.json");
    }
    dir = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  }
  const bool hf = tiktoken.empty() && (is_file(dir / "tokenizer.json") || is_file(dir / "vocab.json"));
  if (hf) {
    for (const char* f : kHfFiles)
      if (is_file(dir / f)) t.files_.emplace_back(f, read_file(dir / f));
    const fs::path v1 = tiktoken_in(dir);
    if (!v1.empty()) t.files_.emplace_back(v1.filename().string(), read_file(v1));
    return t;
  }
  if (tiktoken.empty()) tiktoken = tiktoken_in(dir);
  if (tiktoken.empty()) return t;  // a directory without tokenizer files
  const auto tok = data::Tokenizer::load(tiktoken.string());
  const data::HfTokenizerFiles hf_files = data::hf_tokenizer_files(*tok);
  t.generated_ = true;
  t.files_ = {{"tokenizer.json", hf_files.tokenizer_json},
              {"vocab.json", hf_files.vocab_json},
              {"merges.txt", hf_files.merges_txt},
              {"tokenizer_config.json", hf_files.tokenizer_config_json},
              {tiktoken.filename().string(), read_file(tiktoken)}};
  return t;
}

ExportTokenizer ExportTokenizer::for_checkpoint(const std::string& checkpoint, const std::string& explicit_source) {
  if (!explicit_source.empty()) {
    ExportTokenizer t = from_source(explicit_source);
    MOEKIT_CHECK(!t.empty(), "--tokenizer ", explicit_source,
                 ": no tokenizer files there (tokenizer.json, vocab.json + merges.txt or qwen.tiktoken)");
    return t;
  }
  const fs::path cfg = fs::path(checkpoint) / "config.resolved.yaml";
  if (!is_file(cfg)) return ExportTokenizer();
  const YAML::Node root = load_yaml_file(cfg.string());
  for (const char* key : {"init_from", "model"}) {
    if (!root[key] || !root[key].IsScalar()) continue;
    const std::string dir = root[key].as<std::string>();
    if (!dir.empty() && has_tokenizer(dir)) return from_source(dir);
  }
  return ExportTokenizer();
}

std::vector<std::string> ExportTokenizer::names() const {
  std::vector<std::string> out;
  for (const auto& f : files_) out.push_back(f.first);
  return out;
}

void ExportTokenizer::write_into(const std::string& dir) const {
  for (const auto& [name, contents] : files_) data::write_file_atomic((fs::path(dir) / name).string(), contents);
}

std::string ExportTokenizer::describe() const {
  if (files_.empty())
    return source_.empty() ? "no tokenizer source (pass --tokenizer to add one)" : "no tokenizer files in " + source_;
  std::string names_list;
  for (const auto& f : files_) names_list += (names_list.empty() ? "" : ", ") + f.first;
  return names_list + (generated_ ? " (HF files generated from the .tiktoken of " : " (from ") + source_ + ")";
}

}  // namespace moekit::checkpoint
