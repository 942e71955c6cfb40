// Byte-level BPE over token ids: the vocabulary (id -> bytes and back), the mergeable pairs
// (left id, right id) -> (rank, merged id), and the merge loop that turns one pre-tokenized piece
// into ids. Two rules fill the pair table, one per file family:
//   tiktoken (qwen.tiktoken): any two adjacent parts whose concatenation is a token merge, with
//     that token's rank as priority, and a piece that is itself a token is that token (tiktoken's
//     CoreBPE::encode_native and _byte_pair_merge);
//   merges (HF vocab.json + merges.txt, tokenizer.json): only the listed merges, priority = line
//     order, the whole-piece shortcut only with tokenizer.json's "ignore_merges".
// Both then run the same loop: merge the lowest-priority adjacent pair, leftmost first on ties,
// until none is left (tiktoken's scan, tokenizers' Word::merge_all heap: the same order).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moekit::data {

// The hash of the token tables and of the encoder's piece cache: 8 bytes per multiply-xorshift
// round, the length mixed in.
inline uint64_t bpe_hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(n) * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 29;
  }
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 32);
}

// Work space of one thread (no allocation per piece once warm).
struct BpeScratch {
  std::vector<int32_t> ids;
  std::vector<uint32_t> ranks;
  std::vector<int32_t> prev, next;
  std::vector<uint64_t> heap;
};

class BpeModel {
 public:
  static constexpr uint32_t kNoRank = 0xFFFFFFFFu;

  // tiktoken rule. tokens[rank] = the token's bytes; every token distinct and non-empty, all 256
  // single bytes present (the caller has checked and names the file in its errors).
  static BpeModel from_ranks(std::vector<std::string> tokens);
  // Merge rule. id_to_bytes[id] = bytes ("" for ids without a regular token); merges in priority
  // order as (left id, right id), each concatenation a token (checked by the caller); a pair
  // listed twice keeps its last priority, as tokenizers and transformers' slow tokenizer do.
  static BpeModel from_merges(std::vector<std::string> id_to_bytes, const std::vector<std::pair<int32_t, int32_t>>& merges,
                              bool ignore_merges);

  int32_t num_ids() const { return static_cast<int32_t>(offsets_.size()) - 1; }
  bool has_token(int32_t id) const { return id >= 0 && id < num_ids() && offsets_[id + 1] > offsets_[id]; }
  std::string_view token_bytes(int32_t id) const {
    return std::string_view(arena_.data() + offsets_[id], offsets_[id + 1] - offsets_[id]);
  }
  int32_t find(std::string_view bytes) const;  // -1 when not a token
  int32_t byte_id(uint8_t b) const { return byte_ids_[b]; }
  bool tiktoken_rule() const { return tiktoken_rule_; }
  bool whole_piece_lookup() const { return whole_piece_lookup_; }
  size_t num_pairs() const { return num_pairs_; }

  // Appends the ids of one piece (non-empty bytes).
  void encode_piece(std::string_view piece, std::vector<int32_t>* out, BpeScratch* s) const;
  // Merges with priority < max_rank only, without the whole-piece shortcut; the parts left.
  void merge(std::string_view bytes, uint32_t max_rank, std::vector<int32_t>* out, BpeScratch* s) const;

  // The model as an HF merge list, in priority order. For the merge rule: the merges given
  // (duplicates dropped). For the tiktoken rule: each multi-byte token's last merge when BPE runs
  // on its own bytes over lower ranks (the form Qwen2's merges.txt has: one merge per token);
  // *unreachable counts tokens that no such merge builds (left out).
  std::vector<std::pair<int32_t, int32_t>> merge_list(int64_t* unreachable) const;

 private:
  struct PairSlot {
    uint64_t key;
    uint32_t rank;
    int32_t merged;
  };
  static constexpr uint64_t kEmptyKey = ~0ull;
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void build_token_index(std::vector<std::string> id_to_bytes);
  void init_pairs(size_t expected);
  void add_pair(int32_t a, int32_t b, uint32_t rank, int32_t merged);  // overwrites
  const PairSlot* find_pair(int32_t a, int32_t b) const;
  uint32_t pair_rank(int32_t a, int32_t b, uint32_t max_rank, int32_t* merged) const;
  void merge_linear(std::vector<int32_t>* ids, uint32_t max_rank, BpeScratch* s) const;
  void merge_heap(std::vector<int32_t>* ids, uint32_t max_rank, BpeScratch* s) const;

  std::string arena_;               // every token's bytes, back to back
  std::vector<uint32_t> offsets_;   // token id -> [offsets_[id], offsets_[id+1]) in arena_
  std::vector<int32_t> token_slots_;  // open addressing: token id or -1
  uint64_t token_mask_ = 0;
  std::vector<PairSlot> pair_slots_;
  uint64_t pair_mask_ = 0;
  size_t num_pairs_ = 0;
  int32_t byte_ids_[256] = {};
  bool tiktoken_rule_ = false, whole_piece_lookup_ = false;
  std::vector<std::pair<int32_t, int32_t>> merges_;  // merge rule: as given (deduplicated)
};

}  // namespace moekit::data
