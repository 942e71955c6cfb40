// Dataset statistics for `moekit data inspect`: counts, document lengths and their histogram,
// the most frequent tokens, vocabulary coverage and the unigram entropy.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "data/token_dataset.h"

namespace moekit::data {

struct DatasetStats {
  int64_t documents = 0, tokens = 0;
  int64_t min_doc_len = 0, max_doc_len = 0;
  double mean_doc_len = 0;
  // Document lengths in power-of-two buckets: bucket b counts lengths in [2^b, 2^(b+1)); empty
  // documents are counted in empty_documents.
  std::vector<int64_t> length_histogram;
  int64_t empty_documents = 0;
  std::vector<std::pair<int64_t, int64_t>> top_tokens;  // (token id, count), most frequent first
  int64_t distinct_tokens = 0;
  int64_t max_token_id = -1;
  int64_t vocab_size = 0;  // 0 when unknown; then coverage is not reported
  double unigram_entropy = 0;  // nats
};

// Scans every token. vocab_size > 0 turns an out-of-range token into an error naming its file,
// document and offset; a negative token id is always an error.
DatasetStats compute_stats(const TokenDataset& data, int top_k, int64_t vocab_size);

nlohmann::json stats_to_json(const TokenDataset& data, const DatasetStats& stats);
std::string stats_to_text(const TokenDataset& data, const DatasetStats& stats);

}  // namespace moekit::data
