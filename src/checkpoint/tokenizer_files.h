// The tokenizer files an HF export carries (`moekit export`, `moekit upcycle`), taken from its
// source so that AutoTokenizer.from_pretrained(export) works:
//   - a source with HF tokenizer files (Qwen1.5/Qwen2: tokenizer.json, vocab.json, merges.txt,
//     tokenizer_config.json, special_tokens_map.json, added_tokens.json) gives them verbatim;
//   - a source with only qwen.tiktoken (Qwen v1) gives that file plus tokenizer.json, vocab.json,
//     merges.txt and a tokenizer_config.json for transformers' Qwen2Tokenizer generated from it
//     (data/tokenizer_hf.h); v1's own tokenizer_config.json and tokenization_qwen.py stay behind,
//     since they point AutoTokenizer at remote code.
// Everything is read (and generated) before the export writes anything, so a bad tokenizer file
// fails the export before any output exists; write_into() then only writes small files.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace moekit::checkpoint {

class ExportTokenizer {
 public:
  // `source`: a directory or a tokenizer file (*.tiktoken, tokenizer.json, vocab.json); ""
  // or a directory without tokenizer files: none.
  static ExportTokenizer from_source(const std::string& source);
  // For `moekit export`: `explicit_source` (--tokenizer) when given; otherwise the run's
  // init_from, then its model, when that is a directory with tokenizer files (read from the
  // config.resolved.yaml of the checkpoint or run directory `checkpoint`).
  static ExportTokenizer for_checkpoint(const std::string& checkpoint, const std::string& explicit_source);

  bool empty() const { return files_.empty(); }
  const std::string& source() const { return source_; }
  std::vector<std::string> names() const;
  // Writes every file into dir (an existing directory), each through a temp file and rename.
  void write_into(const std::string& dir) const;
  // One line for the log: what was carried, or why nothing was.
  std::string describe() const;

 private:
  std::string source_;
  bool generated_ = false;
  std::vector<std::pair<std::string, std::string>> files_;  // name -> contents
};

}  // namespace moekit::checkpoint
