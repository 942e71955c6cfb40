// TokenDataset: one view over a list of token files — Megatron prefixes and llm.c shards —
// as a sequence of documents (spans of token ids, handed out as int64). Document numbers are
// global: file 0's documents first, then file 1's, and so on. Cheap to copy (shared readers).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/file_io.h"

namespace moekit::data {

struct DatasetOptions {
  static constexpr int64_t kAuto = -2;     // the shard variant's own delimiter (see llmc_shard.h)
  static constexpr int64_t kNoSplit = -1;  // the whole shard is one document
  // llm.c shards carry no document index: a document starts at every occurrence of this token
  // (llm.c writes the delimiter at the start of each document; tokens before the first
  // delimiter form a document of their own).
  int64_t llmc_delimiter = kAuto;
};

enum class FileFormat { kMegatron, kLlmc };

struct FileInfo {
  std::string path;  // Megatron: the prefix; llm.c: the shard
  FileFormat format = FileFormat::kMegatron;
  TokenDType dtype = TokenDType::kInt32;
  int64_t first_document = 0;  // global number of its first document
  int64_t num_documents = 0;
  int64_t num_tokens = 0;
};

// One opened file seen as documents; implemented per format in token_dataset.cpp.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t num_documents() const = 0;
  virtual int64_t document_length(int64_t doc) const = 0;
  virtual void read(int64_t doc, int64_t offset, int64_t count, int64_t* out) const = 0;
};

class TokenDataset {
 public:
  TokenDataset() = default;
  // Each entry is a Megatron prefix (PREFIX.idx + PREFIX.bin; PREFIX.idx or PREFIX.bin also
  // accepted) or an llm.c shard, told apart by the files present and the shard magic.
  static TokenDataset open(const std::vector<std::string>& paths, const DatasetOptions& options = {});
  static TokenDataset open(const std::string& path, const DatasetOptions& options = {}) {
    return open(std::vector<std::string>{path}, options);
  }

  int num_files() const { return static_cast<int>(files_.size()); }
  const FileInfo& file(int i) const { return files_[i]; }
  int64_t num_documents() const { return num_documents_; }
  int64_t num_tokens() const { return num_tokens_; }

  int64_t document_length(int64_t doc) const;
  // out[0..count) = tokens [offset, offset+count) of global document `doc`.
  void read(int64_t doc, int64_t offset, int64_t count, int64_t* out) const;
  std::vector<int64_t> document(int64_t doc) const;

  // Which file holds global document `doc`, and its number inside that file.
  int file_of(int64_t doc) const;
  // "PATH document K (global G) offset O": how errors name a token's position.
  std::string position(int64_t doc, int64_t offset) const;
  // Throws naming the file, document and offset of the first token outside [0, vocab_size).
  void check_vocab(int64_t vocab_size) const;

 private:
  std::vector<FileInfo> files_;
  std::vector<std::shared_ptr<const TokenSource>> sources_;
  int64_t num_documents_ = 0, num_tokens_ = 0;
};

}  // namespace moekit::data
