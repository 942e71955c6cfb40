// Tokenizer tables, decoding, and the per-thread encoder (special split -> NFC -> pattern ->
// cached BPE). The file readers are in tokenizer_load.cpp, the HF writers in tokenizer_hf.cpp.
#include "data/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/check.h"
#include "data/unicode_text.h"

namespace moekit::data {

const char* tokenizer_format_name(TokenizerFormat f) {
  switch (f) {
    case TokenizerFormat::kTiktoken: return "tiktoken";
    case TokenizerFormat::kTokenizerJson: return "tokenizer.json";
    case TokenizerFormat::kVocabMerges: return "vocab.json+merges.txt";
  }
  return "?";
}

Tokenizer::Tokenizer(TokenizerSpec spec) : spec_(std::move(spec)) {
  // The BPE model takes the token bytes over.
  if (spec_.format == TokenizerFormat::kTiktoken) {
    bpe_ = BpeModel::from_ranks(std::move(spec_.tokens));
  } else {
    bpe_ = BpeModel::from_merges(std::move(spec_.tokens), spec_.merges, spec_.ignore_merges);
  }
  spec_.tokens = {};
  spec_.merges.clear();
  spec_.merges.shrink_to_fit();
  pattern_ = std::make_unique<Pattern>(spec_.pattern, spec_.path);
  std::vector<std::pair<std::string, int32_t>> sp;
  int64_t n = bpe_.num_ids();
  for (const auto& s : spec_.specials) {
    sp.emplace_back(s.content, s.id);
    n = std::max<int64_t>(n, int64_t{s.id} + 1);
  }
  special_matcher_ = SpecialMatcher(sp);
  decode_table_.assign(static_cast<size_t>(n), std::string_view());
  valid_id_.assign(static_cast<size_t>(n), 0);
  for (int32_t id = 0; id < bpe_.num_ids(); ++id) {
    if (!bpe_.has_token(id)) continue;
    decode_table_[id] = bpe_.token_bytes(id);
    valid_id_[id] = 1;
  }
  for (const auto& s : spec_.specials) {  // an added token's content wins, as in transformers
    decode_table_[s.id] = s.content;
    valid_id_[s.id] = 1;
  }
}

int32_t Tokenizer::special_id(std::string_view content) const {
  for (const auto& s : spec_.specials)
    if (s.content == content) return s.id;
  return -1;
}

int32_t Tokenizer::eos_id() const {
  const int32_t eot = special_id("<|endoftext|>");
  if (eot >= 0 || spec_.eos_token.empty()) return eot;
  const int32_t eos = special_id(spec_.eos_token);
  return eos >= 0 ? eos : bpe_.find(spec_.eos_token);
}

std::string_view Tokenizer::id_bytes(int64_t id) const {
  MOEKIT_CHECK(id >= 0 && id < num_ids() && valid_id_[id], "token id ", id, " is not in the vocabulary of ",
               spec_.path, " (", num_ids(), " ids)");
  return decode_table_[id];
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) const {
  std::string out;
  out.reserve(n * 4);
  for (size_t i = 0; i < n; ++i) out += id_bytes(ids[i]);
  return out;
}

// ---- encoder -------------------------------------------------------------------------------

TokenEncoder::TokenEncoder(const Tokenizer& t) : tok_(t), matcher_(t.pattern()) {
  cache_.assign(size_t{1} << kCacheBits, CacheSlot{0, 0, 0, 0});
}

void TokenEncoder::encode(std::string_view text, std::vector<int32_t>* out, bool parse_special) {
  const size_t valid = utf8_valid_prefix(text);
  MOEKIT_CHECK(valid == text.size(), "invalid UTF-8 at byte ", valid, " of the text");
  const TokenizerSpec& spec = tok_.spec();
  if (spec.nfc && spec.nfc_before_specials && nfc_normalize(text, &whole_nfc_)) text = whole_nfc_;
  const bool nfc_segments = spec.nfc && !spec.nfc_before_specials;
  const SpecialMatcher& specials = tok_.special_matcher();
  if (!parse_special || specials.empty()) {
    encode_segment(text, nfc_segments, out);
    return;
  }
  size_t pos = 0;
  for (;;) {
    int32_t id = 0;
    size_t len = 0;
    const size_t at = specials.find(text, pos, &id, &len);
    const size_t end = at == std::string_view::npos ? text.size() : at;
    if (end > pos) encode_segment(text.substr(pos, end - pos), nfc_segments, out);
    if (at == std::string_view::npos) break;
    out->push_back(id);
    pos = at + len;
  }
}

void TokenEncoder::encode_segment(std::string_view text, bool normalize, std::vector<int32_t>* out) {
  if (normalize && nfc_normalize(text, &segment_nfc_)) text = segment_nfc_;
  matcher_.split(text, tok_.spec().keep_gaps, [&](std::string_view piece) { encode_piece(piece, out); });
}

void TokenEncoder::compute_piece(std::string_view piece, std::vector<int32_t>* out) {
  const BpeModel& bpe = tok_.bpe();
  if (bpe.whole_piece_lookup()) {
    const int32_t id = bpe.find(piece);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  bpe.merge(piece, BpeModel::kNoRank, out, &scratch_);
}

void TokenEncoder::encode_piece(std::string_view piece, std::vector<int32_t>* out) {
  if (piece.size() == 1) {
    out->push_back(tok_.bpe().byte_id(static_cast<uint8_t>(piece[0])));
    return;
  }
  if (piece.size() > kMaxKey) {
    compute_piece(piece, out);
    return;
  }
  uint64_t w[2] = {0, 0};
  std::memcpy(w, piece.data(), piece.size());
  const uint64_t h = (w[0] ^ (w[1] * 0xC2B2AE3D27D4EB4Full) ^ (piece.size() * 0x165667B19E3779F9ull)) * 0x9E3779B97F4A7C15ull;
  CacheSlot& c = cache_[h >> (64 - kCacheBits)];
  if (c.len == piece.size() && c.w0 == w[0] && c.w1 == w[1]) {
    if (!(c.value & kMulti)) {
      out->push_back(static_cast<int32_t>(c.value));
    } else {
      const int32_t* at = cache_ids_.data() + (c.value & ~kMulti);
      out->insert(out->end(), at + 1, at + 1 + at[0]);
    }
    return;
  }
  piece_ids_.clear();
  compute_piece(piece, &piece_ids_);
  out->insert(out->end(), piece_ids_.begin(), piece_ids_.end());
  if (piece_ids_.size() == 1) {
    c = CacheSlot{w[0], w[1], static_cast<uint32_t>(piece.size()), static_cast<uint32_t>(piece_ids_[0])};
    return;
  }
  if (cache_ids_.size() + piece_ids_.size() + 1 > kMaxCacheIds) {  // the id store is full: start over
    std::fill(cache_.begin(), cache_.end(), CacheSlot{0, 0, 0, 0});
    cache_ids_.clear();
  }
  c = CacheSlot{w[0], w[1], static_cast<uint32_t>(piece.size()), kMulti | static_cast<uint32_t>(cache_ids_.size())};
  cache_ids_.push_back(static_cast<int32_t>(piece_ids_.size()));
  cache_ids_.insert(cache_ids_.end(), piece_ids_.begin(), piece_ids_.end());
}

}  // namespace moekit::data
