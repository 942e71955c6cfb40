// The Qwen tokenizer (byte-level BPE) read from any of the files it ships as:
//   qwen.tiktoken                 Qwen v1 (Qwen-1.8B ...): base64 token and rank per line; the
//                                 special tokens <|endoftext|>, <|im_start|>, <|im_end|>,
//                                 <|extra_0|> ... <|extra_204|> numbered from the first free id
//                                 (151643), as tokenization_qwen.py does;
//   tokenizer.json                Qwen1.5 / Qwen2 (HF tokenizers);
//   vocab.json + merges.txt       the same vocabulary for transformers' slow Qwen2Tokenizer, the
//                                 special tokens from tokenizer_config.json beside them.
// Encoding = special-token split, NFC, Qwen's pre-tokenizer pattern (PCRE2), byte-level BPE;
// it reproduces tiktoken (tiktoken files) and HF tokenizers (the other two) id for id, which
// tests/tokenizer checks on a multilingual corpus. Every file is untrusted: sizes are bounded and
// each error names the file and line (or JSON key).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/bpe.h"
#include "data/pretokenizer.h"

namespace moekit::data {

enum class TokenizerFormat { kTiktoken, kTokenizerJson, kVocabMerges };
const char* tokenizer_format_name(TokenizerFormat f);

struct SpecialToken {
  std::string content;
  int32_t id = 0;
  bool special = true;  // false: an added token that is not special (transformers' flag)
};

// Everything a reader finds in the files, before the tables are built.
struct TokenizerSpec {
  TokenizerFormat format = TokenizerFormat::kTiktoken;
  std::string path;                                  // the main file read
  std::vector<std::string> tokens;                   // regular token bytes by id ("" = no token)
  std::vector<std::pair<int32_t, int32_t>> merges;   // merge rule only (HF files)
  bool ignore_merges = false;
  std::string pattern = kQwenPattern;
  bool keep_gaps = true;                             // text the pattern skips: a piece (HF) or dropped (tiktoken)
  bool nfc = true;
  bool nfc_before_specials = false;                  // Qwen v1 normalizes the whole text first
  std::vector<SpecialToken> specials;
  std::string eos_token;                             // tokenizer_config.json's eos_token, if any
};

// How text is normalized: "auto" (what the files say: NFC for Qwen's), "nfc" or "none".
struct TokenizerOptions {
  std::string normalization = "auto";
};

class Tokenizer {
 public:
  // PATH: a tokenizer file (*.tiktoken, tokenizer.json, vocab.json or merges.txt) or a directory
  // holding one (tokenizer.json first, then vocab.json + merges.txt, then qwen.tiktoken).
  static std::unique_ptr<Tokenizer> load(const std::string& path, const TokenizerOptions& opt = {});
  explicit Tokenizer(TokenizerSpec spec);

  TokenizerFormat format() const { return spec_.format; }
  const std::string& path() const { return spec_.path; }
  const BpeModel& bpe() const { return bpe_; }
  const Pattern& pattern() const { return *pattern_; }
  const SpecialMatcher& special_matcher() const { return special_matcher_; }
  const TokenizerSpec& spec() const { return spec_; }
  const std::vector<SpecialToken>& specials() const { return spec_.specials; }
  bool nfc() const { return spec_.nfc; }

  // Number of ids: regular and special tokens, max id + 1 (the dtype of a token file follows it).
  int64_t num_ids() const { return static_cast<int64_t>(decode_table_.size()); }
  int32_t special_id(std::string_view content) const;  // -1 when none
  // The document separator: <|endoftext|> when there is one, else tokenizer_config's eos_token;
  // -1 when neither exists.
  int32_t eos_id() const;
  // Bytes of one id (a special token's content for specials); throws for an unknown id.
  std::string_view id_bytes(int64_t id) const;
  std::string decode(const int32_t* ids, size_t n) const;
  std::string decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }

 private:
  TokenizerSpec spec_;
  BpeModel bpe_;
  std::unique_ptr<Pattern> pattern_;
  SpecialMatcher special_matcher_;
  std::vector<std::string_view> decode_table_;  // id -> bytes (into bpe_ or spec_.specials)
  std::vector<uint8_t> valid_id_;
};

// Encodes text with one tokenizer; one per thread (PCRE2 match data, a cache of recent pieces,
// BPE scratch).
class TokenEncoder {
 public:
  explicit TokenEncoder(const Tokenizer& t);
  // Appends the ids of `text`, which must be valid UTF-8 (an error names the byte otherwise).
  // parse_special: special-token strings in the text become their ids (tiktoken's
  // allowed_special="all", tokenizers' default); otherwise they are ordinary text.
  void encode(std::string_view text, std::vector<int32_t>* out, bool parse_special = true);
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) {
    std::vector<int32_t> ids;
    encode(text, &ids, parse_special);
    return ids;
  }

 private:
  void encode_segment(std::string_view text, bool normalize, std::vector<int32_t>* out);
  void encode_piece(std::string_view piece, std::vector<int32_t>* out);
  void compute_piece(std::string_view piece, std::vector<int32_t>* out);

  // A direct-mapped cache of short pieces (up to 16 bytes: most words) -> ids, small enough to
  // stay in L2: a frequent word costs one probe instead of lookups in the token and pair tables,
  // which are megabytes for Qwen's vocabulary and miss the cache. value: the id of a one-token
  // piece, or kMulti | offset of [count, ids...] in cache_ids_.
  struct CacheSlot {
    uint64_t w0, w1;
    uint32_t len, value;
  };
  static constexpr int kCacheBits = 14;
  static constexpr size_t kMaxKey = 16, kMaxCacheIds = size_t{1} << 20;
  static constexpr uint32_t kMulti = 0x80000000u;

  const Tokenizer& tok_;
  PatternMatcher matcher_;
  BpeScratch scratch_;
  std::vector<CacheSlot> cache_;
  std::vector<int32_t> cache_ids_, piece_ids_;
  std::string whole_nfc_, segment_nfc_;
};

}  // namespace moekit::data
