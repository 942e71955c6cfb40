// Megatron-LM indexed datasets (PREFIX.bin + PREFIX.idx, megatron/core/datasets/indexed_dataset.py):
// a validating reader and an atomic writer. Layout (little-endian, packed):
//   0  char[9]  magic "MMIDIDX\0\0"          9  u64 version = 1        17 u8 dtype code
//   18 u64 S (sequence_count)                26 u64 D (document_count = #documents + 1)
//   34 int32[S] sequence_lengths   then int64[S] sequence_pointers (byte offsets into .bin)
//   then int64[D] document_indices (0, ..., S)   then int8[S] sequence_modes (multimodal only)
// The .bin file is the bare concatenation of the sequences' tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/file_io.h"

namespace moekit::data {

inline constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr int64_t kMegatronHeaderBytes = 34;
// Megatron-Core's DType codes for the integer token types (6 float64 and 7 float32 are not token
// types and are refused): 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16.
inline constexpr uint8_t kMegatronCodeInt32 = 4;   // Megatron DType.int32
inline constexpr uint8_t kMegatronCodeUInt16 = 8;  // Megatron DType.uint16
// The token dtype of a Megatron code; false for codes that are not integer token types.
bool megatron_token_dtype(uint8_t code, TokenDType* dtype);
// The Megatron code of a token dtype (uint32 has none: an error).
uint8_t megatron_code(TokenDType dtype);

// Megatron's DType.optimal_dtype: uint16 when the vocabulary is below 65500, int32 otherwise.
TokenDType megatron_optimal_dtype(int64_t vocab_size);

// A validated, memory-mapped Megatron dataset. Every header field and offset is checked on
// open (see validate() in the .cpp for the list); afterwards no access can leave the files.
// Documents, not sequences, are the unit handed out: document k is the contiguous run of
// sequences [document_indices[k], document_indices[k+1]) (one sequence per document for
// preprocess_data.py's default document level).
class IndexedDataset {
 public:
  // `prefix` is the path without .bin/.idx.
  explicit IndexedDataset(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  std::string idx_path() const { return prefix_ + ".idx"; }
  std::string bin_path() const { return prefix_ + ".bin"; }
  TokenDType dtype() const { return dtype_; }
  uint8_t dtype_code() const { return dtype_code_; }
  bool multimodal() const { return multimodal_; }

  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return num_doc_indices_ - 1; }
  int64_t num_tokens() const { return num_tokens_; }
  int32_t sequence_length(int64_t i) const;
  int64_t sequence_pointer(int64_t i) const;  // bytes
  int64_t document_index(int64_t k) const;    // k in [0, num_documents()]

  int64_t document_start(int64_t doc) const;  // first token of the document, in tokens
  int64_t document_length(int64_t doc) const;
  // out[0..count) = tokens [offset, offset+count) of document `doc`.
  void read(int64_t doc, int64_t offset, int64_t count, int64_t* out) const;

 private:
  void validate();
  int64_t sequence_start_token(int64_t seq) const;  // token offset of sequence seq (seq == S: end)

  std::string prefix_;
  MappedFile idx_, bin_;
  TokenDType dtype_ = TokenDType::kInt32;
  uint8_t dtype_code_ = 0;
  bool multimodal_ = false;
  int64_t num_sequences_ = 0, num_doc_indices_ = 0, num_tokens_ = 0;
  int64_t lengths_at_ = 0, pointers_at_ = 0, doc_indices_at_ = 0;  // byte offsets in .idx
};

// Writes PREFIX.bin and PREFIX.idx at document level (one sequence per document) as
// Megatron's IndexedDatasetBuilder does. Tokens stream to PREFIX.bin.tmp.<pid>; finish()
// writes the index, fsyncs both and renames .bin then .idx into place (a reader needs the .idx,
// so it never sees a new index over an old .bin). Without finish() nothing is left behind.
class IndexedDatasetWriter {
 public:
  // dtype from megatron_optimal_dtype(vocab_size); any Megatron integer dtype can be asked for
  // (vocab_size must fit it).
  IndexedDatasetWriter(const std::string& prefix, int64_t vocab_size);
  IndexedDatasetWriter(const std::string& prefix, int64_t vocab_size, TokenDType dtype);

  // Every token must be in [0, vocab_size); errors name the document and offset.
  void add_document(const int64_t* tokens, int64_t n);
  void add_document(const std::vector<int64_t>& tokens) { add_document(tokens.data(), static_cast<int64_t>(tokens.size())); }
  // Streaming form, for documents too long to hold: append their tokens in pieces, then
  // end_document().
  void append_tokens(const int32_t* tokens, int64_t n);
  void end_document();
  void finish();

  int64_t num_documents() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_tokens() const { return num_tokens_; }
  TokenDType dtype() const { return dtype_; }

 private:
  std::string prefix_;
  int64_t vocab_size_;
  TokenDType dtype_;
  template <typename T>
  void write_tokens(const T* tokens, int64_t n);

  AtomicWriter bin_;
  std::vector<int32_t> lengths_;
  std::vector<uint8_t> scratch_;
  int64_t num_tokens_ = 0;
  int64_t open_length_ = 0;  // tokens of the document being appended
  bool finished_ = false;
};

}  // namespace moekit::data
