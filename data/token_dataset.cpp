// TokenDataset: format detection, per-format document views and the global document numbering.
#include "data/token_dataset.h"

#include <algorithm>

#include "core/check.h"
#include "data/indexed_dataset.h"
#include "data/llmc_shard.h"

namespace moekit::data {

namespace {

class MegatronSource : public TokenSource {
 public:
  explicit MegatronSource(const std::string& prefix) : ds_(prefix) {}
  int64_t num_documents() const override { return ds_.num_documents(); }
  int64_t document_length(int64_t doc) const override { return ds_.document_length(doc); }
  void read(int64_t doc, int64_t offset, int64_t count, int64_t* out) const override {
    ds_.read(doc, offset, count, out);
  }
  const IndexedDataset& dataset() const { return ds_; }

 private:
  IndexedDataset ds_;
};

// Documents of an llm.c shard: starts_ holds each document's first token (plus the end).
class LlmcSource : public TokenSource {
 public:
  LlmcSource(const std::string& path, int64_t delimiter) : shard_(path) {
    if (delimiter == DatasetOptions::kAuto) delimiter = shard_.default_delimiter();
    const int64_t n = shard_.num_tokens();
    starts_.push_back(0);
    if (delimiter >= 0 && n > 0) {
      // Scan in chunks: a shard is up to 2^31 tokens and we only need the delimiter positions.
      constexpr int64_t kChunk = 1 << 16;
      std::vector<int64_t> buf(kChunk);
      for (int64_t at = 0; at < n; at += kChunk) {
        const int64_t m = std::min(kChunk, n - at);
        shard_.read(at, m, buf.data());
        for (int64_t i = 0; i < m; ++i)
          if (buf[i] == delimiter && at + i > 0) starts_.push_back(at + i);
      }
    }
    if (n > 0 || starts_.size() == 1) starts_.push_back(n);
    // An empty shard is one empty document: that keeps "every file has >= 1 document" simple.
  }
  int64_t num_documents() const override { return static_cast<int64_t>(starts_.size()) - 1; }
  int64_t document_length(int64_t doc) const override { return starts_[doc + 1] - starts_[doc]; }
  void read(int64_t doc, int64_t offset, int64_t count, int64_t* out) const override {
    MOEKIT_CHECK(offset >= 0 && count >= 0 && offset + count <= document_length(doc), shard_.path(), ": tokens [",
                 offset, ", ", offset + count, ") out of document ", doc, " of length ", document_length(doc));
    shard_.read(starts_[doc] + offset, count, out);
  }
  const LlmcShard& shard() const { return shard_; }

 private:
  LlmcShard shard_;
  std::vector<int64_t> starts_;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TokenDataset TokenDataset::open(const std::vector<std::string>& paths, const DatasetOptions& options) {
  MOEKIT_CHECK(!paths.empty(), "no dataset paths given");
  TokenDataset out;
  for (const std::string& path : paths) {
    MOEKIT_CHECK(!path.empty(), "empty dataset path in the list");
    FileInfo info;
    std::shared_ptr<const TokenSource> src;
    std::string stem;
    if (ends_with(path, ".idx") || ends_with(path, ".bin")) stem = path.substr(0, path.size() - 4);
    if (file_exists(path + ".idx") || (!stem.empty() && file_exists(stem + ".idx"))) {
      const std::string prefix = file_exists(path + ".idx") ? path : stem;
      auto m = std::make_shared<MegatronSource>(prefix);
      info.path = prefix;
      info.format = FileFormat::kMegatron;
      info.dtype = m->dataset().dtype();
      info.num_tokens = m->dataset().num_tokens();
      src = m;
    } else if (file_exists(path)) {
      MOEKIT_CHECK(is_llmc_shard(path), path, ": not an llm.c token shard (first int32 is not magic ",
                   kLlmcMagicGpt2, " or ", kLlmcMagicLlama3, ") and no ", path, ".idx",
                   stem.empty() ? "" : " or " + stem + ".idx", " for a Megatron dataset");
      auto l = std::make_shared<LlmcSource>(path, options.llmc_delimiter);
      info.path = path;
      info.format = FileFormat::kLlmc;
      info.dtype = l->shard().dtype();
      info.num_tokens = l->shard().num_tokens();
      src = l;
    } else {
      MOEKIT_FAIL(path, ": no such dataset (neither ", path, ".idx + ", path, ".bin nor an llm.c shard file)");
    }
    info.first_document = out.num_documents_;
    info.num_documents = src->num_documents();
    out.num_documents_ += info.num_documents;
    out.num_tokens_ += info.num_tokens;
    out.files_.push_back(info);
    out.sources_.push_back(src);
  }
  return out;
}

int TokenDataset::file_of(int64_t doc) const {
  MOEKIT_CHECK(doc >= 0 && doc < num_documents_, "document ", doc, " out of range [0, ", num_documents_, ")");
  // The last file whose first document is <= doc (files with no documents are skipped over).
  auto it = std::upper_bound(files_.begin(), files_.end(), doc,
                             [](int64_t d, const FileInfo& f) { return d < f.first_document; });
  int f = static_cast<int>(it - files_.begin()) - 1;
  while (files_[f].num_documents == 0) --f;
  return f;
}

int64_t TokenDataset::document_length(int64_t doc) const {
  const int f = file_of(doc);
  return sources_[f]->document_length(doc - files_[f].first_document);
}

void TokenDataset::read(int64_t doc, int64_t offset, int64_t count, int64_t* out) const {
  const int f = file_of(doc);
  sources_[f]->read(doc - files_[f].first_document, offset, count, out);
}

std::vector<int64_t> TokenDataset::document(int64_t doc) const {
  std::vector<int64_t> out(static_cast<size_t>(document_length(doc)));
  read(doc, 0, static_cast<int64_t>(out.size()), out.data());
  return out;
}

std::string TokenDataset::position(int64_t doc, int64_t offset) const {
  const int f = file_of(doc);
  return detail::concat(files_[f].path, " document ", doc - files_[f].first_document, " (global ", doc, ") offset ",
                        offset);
}

void TokenDataset::check_vocab(int64_t vocab_size) const {
  std::vector<int64_t> buf;
  constexpr int64_t kChunk = 1 << 16;
  for (int64_t d = 0; d < num_documents_; ++d) {
    const int64_t len = document_length(d);
    for (int64_t at = 0; at < len; at += kChunk) {
      const int64_t m = std::min(kChunk, len - at);
      buf.resize(m);
      read(d, at, m, buf.data());
      for (int64_t i = 0; i < m; ++i)
        MOEKIT_CHECK(buf[i] >= 0 && buf[i] < vocab_size, position(d, at + i), ": token id ", buf[i],
                     " out of range [0, vocab_size = ", vocab_size, ")");
    }
  }
}

}  // namespace moekit::data
