// A tokenizer written as Hugging Face files, in the form Qwen1.5/Qwen2 ship (tokenizer.json,
// vocab.json, merges.txt, tokenizer_config.json for transformers' Qwen2Tokenizer): what
// `moekit data convert-tokenizer` writes and what an export of a qwen.tiktoken model carries, so
// that AutoTokenizer.from_pretrained(dir) loads it without remote code.
//
// From a qwen.tiktoken file the merges are derived: each multi-byte token's last merge when BPE
// runs on its own bytes over lower ranks, one merge per token in rank order (151,387 for Qwen's
// 151,643 tokens, the count of Qwen2's merges.txt). tests/tokenizer checks that the files encode
// like tiktoken on the test corpus.
#pragma once

#include <cstdint>
#include <string>

#include "data/tokenizer.h"

namespace moekit::data {

struct HfTokenizerFiles {
  std::string tokenizer_json, vocab_json, merges_txt, tokenizer_config_json;
  int64_t merges = 0;
  int64_t unreachable = 0;  // tokens no merge builds (left out of merges.txt; 0 for Qwen's)
};

// model_max_length: tokenizer_config.json's value (Qwen1.5's is 32768).
HfTokenizerFiles hf_tokenizer_files(const Tokenizer& t, int64_t model_max_length = 32768);

// Writes the four files into dir (each through a temp file and rename).
void write_hf_tokenizer_files(const HfTokenizerFiles& files, const std::string& dir);

}  // namespace moekit::data
