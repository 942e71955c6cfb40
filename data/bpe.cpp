// BPE tables (open addressing over flat arrays: a Qwen vocabulary is 151k tokens and ~10^5-10^6
// pairs, looked up once per byte of text) and the merge loop.
#include "data/bpe.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "core/check.h"

namespace moekit::data {

namespace {

inline uint64_t hash_bytes(const char* p, size_t n) { return bpe_hash_bytes(p, n); }

inline uint64_t hash_pair(uint64_t key) {
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 29);
}

uint64_t table_size_for(size_t n) {
  uint64_t cap = 16;
  while (cap < 2 * static_cast<uint64_t>(n) + 1) cap <<= 1;
  return cap;
}

// Pieces up to this many bytes merge with tiktoken's O(n^2) scan (fastest for words); longer
// ones (whitespace runs, long digit-free words) through a heap in O(n log n).
constexpr size_t kLinearMax = 64;

}  // namespace

void BpeModel::build_token_index(std::vector<std::string> id_to_bytes) {
  size_t total = 0;
  for (const auto& t : id_to_bytes) total += t.size();
  arena_.reserve(total);
  offsets_.assign(1, 0);
  offsets_.reserve(id_to_bytes.size() + 1);
  for (const auto& t : id_to_bytes) {
    arena_ += t;
    offsets_.push_back(static_cast<uint32_t>(arena_.size()));
  }
  MOEKIT_CHECK(arena_.size() < 0xFFFFFFFFull, "vocabulary: ", arena_.size(), " bytes of tokens is over 4 GiB");
  const uint64_t cap = table_size_for(id_to_bytes.size());
  token_slots_.assign(cap, -1);
  token_mask_ = cap - 1;
  for (int32_t id = 0; id < num_ids(); ++id) {
    if (!has_token(id)) continue;
    const std::string_view b = token_bytes(id);
    uint64_t s = hash_bytes(b.data(), b.size()) & token_mask_;
    while (token_slots_[s] >= 0) {
      MOEKIT_CHECK(token_bytes(token_slots_[s]) != b, "vocabulary: ids ", token_slots_[s], " and ", id,
                   " are the same token");
      s = (s + 1) & token_mask_;
    }
    token_slots_[s] = id;
  }
}

int32_t BpeModel::find(std::string_view bytes) const {
  uint64_t s = hash_bytes(bytes.data(), bytes.size()) & token_mask_;
  for (;;) {
    const int32_t id = token_slots_[s];
    if (id < 0) return -1;
    const uint32_t off = offsets_[id], len = offsets_[id + 1] - off;
    if (len == bytes.size() && std::memcmp(arena_.data() + off, bytes.data(), len) == 0) return id;
    s = (s + 1) & token_mask_;
  }
}

void BpeModel::init_pairs(size_t expected) {
  const uint64_t cap = table_size_for(expected);
  pair_slots_.assign(cap, PairSlot{kEmptyKey, kNoRank, -1});
  pair_mask_ = cap - 1;
  num_pairs_ = 0;
}

void BpeModel::add_pair(int32_t a, int32_t b, uint32_t rank, int32_t merged) {
  const uint64_t key = pair_key(a, b);
  uint64_t s = hash_pair(key) & pair_mask_;
  while (pair_slots_[s].key != kEmptyKey && pair_slots_[s].key != key) s = (s + 1) & pair_mask_;
  if (pair_slots_[s].key == kEmptyKey) ++num_pairs_;
  pair_slots_[s] = PairSlot{key, rank, merged};
}

const BpeModel::PairSlot* BpeModel::find_pair(int32_t a, int32_t b) const {
  const uint64_t key = pair_key(a, b);
  uint64_t s = hash_pair(key) & pair_mask_;
  for (;;) {
    const PairSlot& p = pair_slots_[s];
    if (p.key == key) return &p;
    if (p.key == kEmptyKey) return nullptr;
    s = (s + 1) & pair_mask_;
  }
}

inline uint32_t BpeModel::pair_rank(int32_t a, int32_t b, uint32_t max_rank, int32_t* merged) const {
  const PairSlot* p = find_pair(a, b);
  if (p == nullptr || p->rank >= max_rank) return kNoRank;
  *merged = p->merged;
  return p->rank;
}

BpeModel BpeModel::from_ranks(std::vector<std::string> tokens) {
  BpeModel m;
  m.tiktoken_rule_ = true;
  m.whole_piece_lookup_ = true;
  const int32_t n = static_cast<int32_t>(tokens.size());
  m.build_token_index(std::move(tokens));
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    m.byte_ids_[b] = m.find(std::string_view(&c, 1));
    MOEKIT_CHECK(m.byte_ids_[b] >= 0, "vocabulary: byte ", b, " has no token");
  }
  // Every split of every token into two tokens is a mergeable pair of that token's rank.
  std::vector<std::pair<uint64_t, int32_t>> pairs;
  pairs.reserve(static_cast<size_t>(n) * 3);
  for (int32_t id = 0; id < n; ++id) {
    const std::string_view t = m.token_bytes(id);
    for (size_t k = 1; k < t.size(); ++k) {
      const int32_t a = m.find(t.substr(0, k));
      if (a < 0) continue;
      const int32_t b = m.find(t.substr(k));
      if (b >= 0) pairs.emplace_back(pair_key(a, b), id);
    }
  }
  m.init_pairs(pairs.size());
  for (const auto& [key, id] : pairs)
    m.add_pair(static_cast<int32_t>(key >> 32), static_cast<int32_t>(key & 0xFFFFFFFFu), static_cast<uint32_t>(id), id);
  return m;
}

BpeModel BpeModel::from_merges(std::vector<std::string> id_to_bytes, const std::vector<std::pair<int32_t, int32_t>>& merges,
                               bool ignore_merges) {
  BpeModel m;
  m.whole_piece_lookup_ = ignore_merges;
  m.build_token_index(std::move(id_to_bytes));
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    m.byte_ids_[b] = m.find(std::string_view(&c, 1));
    MOEKIT_CHECK(m.byte_ids_[b] >= 0, "vocabulary: byte ", b, " has no token (byte-level BPE needs all 256)");
  }
  m.init_pairs(merges.size());
  std::string cat;
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto [a, b] = merges[i];
    MOEKIT_CHECK(m.has_token(a) && m.has_token(b), "merge ", i, ": ids ", a, ", ", b, " are not tokens");
    cat.assign(m.token_bytes(a));
    cat += m.token_bytes(b);
    const int32_t merged = m.find(cat);
    MOEKIT_CHECK(merged >= 0, "merge ", i, ": the concatenation is not a token");
    m.add_pair(a, b, static_cast<uint32_t>(i), merged);
  }
  m.merges_.reserve(m.num_pairs_);
  for (size_t i = 0; i < merges.size(); ++i)
    if (m.find_pair(merges[i].first, merges[i].second)->rank == i) m.merges_.push_back(merges[i]);
  return m;
}

void BpeModel::merge_linear(std::vector<int32_t>* ids_io, uint32_t max_rank, BpeScratch* s) const {
  std::vector<int32_t>& ids = *ids_io;
  size_t n = ids.size();
  // ranks[i], merged[i]: the pair (ids[i], ids[i+1]); s->prev doubles as the merged ids.
  s->ranks.resize(n);
  s->prev.resize(n);
  uint32_t* rank = s->ranks.data();
  int32_t* merged = s->prev.data();
  for (size_t i = 0; i + 1 < n; ++i) rank[i] = pair_rank(ids[i], ids[i + 1], max_rank, &merged[i]);
  rank[n - 1] = kNoRank;
  while (n > 1) {
    uint32_t best = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      if (rank[i] < best) {
        best = rank[i];
        at = i;
      }
    }
    if (best == kNoRank) break;
    ids[at] = merged[at];
    std::memmove(&ids[at + 1], &ids[at + 2], (n - at - 2) * sizeof(int32_t));
    std::memmove(&rank[at + 1], &rank[at + 2], (n - at - 2) * sizeof(uint32_t));
    std::memmove(&merged[at + 1], &merged[at + 2], (n - at - 2) * sizeof(int32_t));
    --n;
    if (at > 0) rank[at - 1] = pair_rank(ids[at - 1], ids[at], max_rank, &merged[at - 1]);
    rank[at] = at + 1 < n ? pair_rank(ids[at], ids[at + 1], max_rank, &merged[at]) : kNoRank;
  }
  ids.resize(n);
}

void BpeModel::merge_heap(std::vector<int32_t>* ids_io, uint32_t max_rank, BpeScratch* s) const {
  std::vector<int32_t>& ids = *ids_io;
  const size_t n = ids.size();
  s->prev.resize(n);
  s->next.resize(n);
  for (size_t i = 0; i < n; ++i) {
    s->prev[i] = static_cast<int32_t>(i) - 1;
    s->next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  // Entries (rank << 32 | position): the smallest is the lowest rank, leftmost on ties.
  std::vector<uint64_t>& heap = s->heap;
  heap.clear();
  auto push = [&](int32_t pos) {
    const int32_t q = s->next[pos];
    if (q < 0) return;
    int32_t merged;
    const uint32_t r = pair_rank(ids[pos], ids[q], max_rank, &merged);
    if (r == kNoRank) return;
    heap.push_back((static_cast<uint64_t>(r) << 32) | static_cast<uint32_t>(pos));
    std::push_heap(heap.begin(), heap.end(), std::greater<uint64_t>());
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<uint64_t>());
    const uint64_t top = heap.back();
    heap.pop_back();
    const int32_t p = static_cast<int32_t>(top & 0xFFFFFFFFu);
    const uint32_t r = static_cast<uint32_t>(top >> 32);
    const int32_t q = s->next[p];
    if (ids[p] < 0 || q < 0) continue;
    int32_t merged;
    if (pair_rank(ids[p], ids[q], max_rank, &merged) != r) continue;  // stale: the pair changed
    ids[p] = merged;
    ids[q] = -1;
    s->next[p] = s->next[q];
    if (s->next[q] >= 0) s->prev[s->next[q]] = p;
    if (s->prev[p] >= 0) push(s->prev[p]);
    push(p);
  }
  size_t w = 0;
  for (size_t i = 0; i < n; ++i)
    if (ids[i] >= 0) ids[w++] = ids[i];
  ids.resize(w);
}

void BpeModel::merge(std::string_view bytes, uint32_t max_rank, std::vector<int32_t>* out, BpeScratch* s) const {
  s->ids.resize(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) s->ids[i] = byte_ids_[static_cast<uint8_t>(bytes[i])];
  if (bytes.size() > 1) {
    if (bytes.size() <= kLinearMax) {
      merge_linear(&s->ids, max_rank, s);
    } else {
      merge_heap(&s->ids, max_rank, s);
    }
  }
  out->insert(out->end(), s->ids.begin(), s->ids.end());
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>* out, BpeScratch* s) const {
  if (piece.size() == 1) {
    out->push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (whole_piece_lookup_) {
    const int32_t id = find(piece);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  merge(piece, kNoRank, out, s);
}

std::vector<std::pair<int32_t, int32_t>> BpeModel::merge_list(int64_t* unreachable) const {
  *unreachable = 0;
  if (!tiktoken_rule_) return merges_;
  std::vector<std::pair<int32_t, int32_t>> out;
  out.reserve(static_cast<size_t>(num_ids()));
  BpeScratch s;
  std::vector<int32_t> parts;
  for (int32_t id = 0; id < num_ids(); ++id) {
    const std::string_view t = token_bytes(id);
    if (t.size() < 2) continue;
    parts.clear();
    merge(t, static_cast<uint32_t>(id), &parts, &s);
    if (parts.size() == 2) {
      out.emplace_back(parts[0], parts[1]);
    } else {
      ++*unreachable;
    }
  }
  return out;
}

}  // namespace moekit::data
