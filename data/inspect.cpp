// Dataset statistics (one streaming pass over every token) and their text/JSON renderings.
#include "data/inspect.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <unordered_map>

#include "core/check.h"

namespace moekit::data {

namespace {
// Token ids below this are counted in a dense array, the rest in a hash map (only corrupt or
// exotic data has ids that large).
constexpr int64_t kDenseIds = int64_t{1} << 24;

int bucket_of(int64_t len) {
  int b = 0;
  while ((int64_t{2} << b) <= len) ++b;
  return b;
}

const char* format_name(FileFormat f) { return f == FileFormat::kMegatron ? "megatron" : "llmc"; }
}  // namespace

DatasetStats compute_stats(const TokenDataset& data, int top_k, int64_t vocab_size) {
  DatasetStats st;
  st.documents = data.num_documents();
  st.tokens = data.num_tokens();
  st.vocab_size = vocab_size;
  st.min_doc_len = st.documents ? INT64_MAX : 0;
  std::vector<int64_t> dense;
  std::unordered_map<int64_t, int64_t> sparse;
  std::vector<int64_t> buf;
  constexpr int64_t kChunk = 1 << 16;
  for (int64_t d = 0; d < st.documents; ++d) {
    const int64_t len = data.document_length(d);
    st.min_doc_len = std::min(st.min_doc_len, len);
    st.max_doc_len = std::max(st.max_doc_len, len);
    if (len == 0) {
      ++st.empty_documents;
    } else {
      const int b = bucket_of(len);
      if (static_cast<int>(st.length_histogram.size()) <= b) st.length_histogram.resize(b + 1, 0);
      ++st.length_histogram[b];
    }
    for (int64_t at = 0; at < len; at += kChunk) {
      const int64_t m = std::min(kChunk, len - at);
      buf.resize(m);
      data.read(d, at, m, buf.data());
      for (int64_t i = 0; i < m; ++i) {
        const int64_t t = buf[i];
        MOEKIT_CHECK(t >= 0, data.position(d, at + i), ": negative token id ", t);
        MOEKIT_CHECK(vocab_size <= 0 || t < vocab_size, data.position(d, at + i), ": token id ", t,
                     " out of range [0, vocab_size = ", vocab_size, ")");
        if (t < kDenseIds) {
          if (t >= static_cast<int64_t>(dense.size())) dense.resize(std::max<size_t>(t + 1, dense.size() * 2), 0);
          ++dense[t];
        } else {
          ++sparse[t];
        }
      }
    }
  }
  st.mean_doc_len = st.documents ? static_cast<double>(st.tokens) / st.documents : 0.0;

  std::vector<std::pair<int64_t, int64_t>> counts;  // (token, count) of the tokens seen
  for (size_t t = 0; t < dense.size(); ++t)
    if (dense[t]) counts.emplace_back(static_cast<int64_t>(t), dense[t]);
  for (const auto& kv : sparse) counts.push_back(kv);
  st.distinct_tokens = static_cast<int64_t>(counts.size());
  for (const auto& c : counts) {
    st.max_token_id = std::max(st.max_token_id, c.first);
    const double p = static_cast<double>(c.second) / static_cast<double>(st.tokens);
    st.unigram_entropy -= p * std::log(p);
  }
  // Most frequent first; ties by token id so the output is deterministic.
  auto by_count = [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; };
  const size_t k = std::min(counts.size(), static_cast<size_t>(std::max(0, top_k)));
  std::partial_sort(counts.begin(), counts.begin() + k, counts.end(), by_count);
  st.top_tokens.assign(counts.begin(), counts.begin() + k);
  return st;
}

nlohmann::json stats_to_json(const TokenDataset& data, const DatasetStats& st) {
  nlohmann::json files = nlohmann::json::array();
  for (int i = 0; i < data.num_files(); ++i) {
    const FileInfo& f = data.file(i);
    files.push_back({{"path", f.path},
                     {"format", format_name(f.format)},
                     {"dtype", token_dtype_name(f.dtype)},
                     {"documents", f.num_documents},
                     {"tokens", f.num_tokens}});
  }
  nlohmann::json hist = nlohmann::json::array();
  for (size_t b = 0; b < st.length_histogram.size(); ++b)
    hist.push_back({{"min", int64_t{1} << b}, {"max", (int64_t{2} << b) - 1}, {"count", st.length_histogram[b]}});
  nlohmann::json top = nlohmann::json::array();
  for (const auto& [tok, count] : st.top_tokens)
    top.push_back({{"token", tok}, {"count", count}, {"fraction", static_cast<double>(count) / st.tokens}});
  nlohmann::json j = {{"files", files},
                      {"documents", st.documents},
                      {"tokens", st.tokens},
                      {"doc_len", {{"min", st.min_doc_len}, {"mean", st.mean_doc_len}, {"max", st.max_doc_len}}},
                      {"empty_documents", st.empty_documents},
                      {"length_histogram", hist},
                      {"top_tokens", top},
                      {"distinct_tokens", st.distinct_tokens},
                      {"max_token_id", st.max_token_id},
                      {"unigram_entropy_nats", st.unigram_entropy}};
  if (st.vocab_size > 0) {
    j["vocab_size"] = st.vocab_size;
    j["vocab_coverage"] = static_cast<double>(st.distinct_tokens) / static_cast<double>(st.vocab_size);
  } else {
    j["vocab_size"] = nullptr;
    j["vocab_coverage"] = nullptr;
  }
  return j;
}

std::string stats_to_text(const TokenDataset& data, const DatasetStats& st) {
  std::ostringstream os;
  for (int i = 0; i < data.num_files(); ++i) {
    const FileInfo& f = data.file(i);
    os << "file " << f.path << ": " << format_name(f.format) << ", " << token_dtype_name(f.dtype) << " tokens, "
       << f.num_documents << " documents, " << f.num_tokens << " tokens\n";
  }
  os << "documents: " << st.documents << "  tokens: " << st.tokens << "\n";
  os << "document length: min " << st.min_doc_len << "  mean " << st.mean_doc_len << "  max " << st.max_doc_len
     << "\n";
  os << "length histogram:\n";
  if (st.empty_documents) os << "  0                 " << st.empty_documents << "\n";
  int64_t peak = 1;
  for (int64_t c : st.length_histogram) peak = std::max(peak, c);
  size_t first = 0;  // leading empty buckets say nothing
  while (first < st.length_histogram.size() && st.length_histogram[first] == 0) ++first;
  for (size_t b = first; b < st.length_histogram.size(); ++b) {
    std::ostringstream range;
    range << "[" << (int64_t{1} << b) << ", " << (int64_t{2} << b) << ")";
    std::string bar(static_cast<size_t>(40 * st.length_histogram[b] / peak), '#');
    os << "  " << range.str() << std::string(range.str().size() < 18 ? 18 - range.str().size() : 1, ' ')
       << st.length_histogram[b] << "  " << bar << "\n";
  }
  os << "top tokens:";
  for (const auto& [tok, count] : st.top_tokens)
    os << "  " << tok << " (" << 100.0 * static_cast<double>(count) / st.tokens << "%)";
  os << "\n";
  os << "distinct tokens: " << st.distinct_tokens << "  max id: " << st.max_token_id;
  if (st.vocab_size > 0)
    os << "  vocab coverage: " << 100.0 * static_cast<double>(st.distinct_tokens) / st.vocab_size << "% of "
       << st.vocab_size;
  os << "\nunigram entropy: " << st.unigram_entropy << " nats\n";
  return os.str();
}

}  // namespace moekit::data
