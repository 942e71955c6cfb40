// llm.c token shards (karpathy/llm.c dev/data/data_common.py, llmc/dataloader.h): a header of
// 256 int32 — [0] magic, [1] version, [2] token count, the rest zero — then the tokens.
//   GPT-2 variant:   magic 20240520, version 1, uint16 tokens (what llm.c's C loader reads)
//   Llama-3 variant: magic 20240801, version 7, uint32 tokens
// The shard size must be exactly 1024 + itemsize * count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/file_io.h"

namespace moekit::data {

inline constexpr int32_t kLlmcMagicGpt2 = 20240520;
inline constexpr int32_t kLlmcMagicLlama3 = 20240801;
inline constexpr int64_t kLlmcHeaderBytes = 256 * 4;
// llm.c's writers put a delimiter at the start of every document: GPT-2's <|endoftext|>
// (50256) and Llama-3's <|begin_of_text|> (128000).
inline constexpr int64_t kLlmcDelimiterGpt2 = 50256;
inline constexpr int64_t kLlmcDelimiterLlama3 = 128000;

enum class LlmcVariant { kGpt2, kLlama3 };

// True when the file's first int32 is one of the token-shard magics (cheap format sniffing).
bool is_llmc_shard(const std::string& path);

class LlmcShard {
 public:
  explicit LlmcShard(const std::string& path);  // validates the header and the size

  const std::string& path() const { return file_.path(); }
  LlmcVariant variant() const { return variant_; }
  TokenDType dtype() const { return variant_ == LlmcVariant::kGpt2 ? TokenDType::kUInt16 : TokenDType::kUInt32; }
  int64_t default_delimiter() const {
    return variant_ == LlmcVariant::kGpt2 ? kLlmcDelimiterGpt2 : kLlmcDelimiterLlama3;
  }
  int64_t num_tokens() const { return num_tokens_; }
  // out[0..count) = tokens [offset, offset+count) of the shard.
  void read(int64_t offset, int64_t count, int64_t* out) const;

 private:
  MappedFile file_;
  LlmcVariant variant_ = LlmcVariant::kGpt2;
  int64_t num_tokens_ = 0;
};

// Atomic write of a shard; tokens must fit the variant's dtype (errors name the position).
void write_llmc_shard(const std::string& path, const std::vector<int64_t>& tokens, LlmcVariant variant);

}  // namespace moekit::data
