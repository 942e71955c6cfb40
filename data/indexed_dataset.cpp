// Megatron .bin/.idx reader (every field validated before use, reliability-ecosystem.md 2.1)
// and document-level writer.
#include "data/indexed_dataset.h"

#include <algorithm>
#include <limits>

#include "core/check.h"

namespace moekit::data {

TokenDType megatron_optimal_dtype(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDType::kUInt16 : TokenDType::kInt32;
}

namespace {
struct CodeEntry {
  uint8_t code;
  TokenDType dtype;
  int64_t max_vocab;  // ids [0, max_vocab) fit
};
constexpr CodeEntry kCodes[] = {{1, TokenDType::kUInt8, 256},
                                {2, TokenDType::kInt8, 128},
                                {3, TokenDType::kInt16, 32768},
                                {kMegatronCodeInt32, TokenDType::kInt32, int64_t{1} << 31},
                                {5, TokenDType::kInt64, std::numeric_limits<int64_t>::max()},
                                {kMegatronCodeUInt16, TokenDType::kUInt16, 65536}};
const CodeEntry* code_entry(TokenDType dtype) {
  for (const CodeEntry& e : kCodes)
    if (e.dtype == dtype) return &e;
  return nullptr;
}
}  // namespace

bool megatron_token_dtype(uint8_t code, TokenDType* dtype) {
  for (const CodeEntry& e : kCodes)
    if (e.code == code) {
      *dtype = e.dtype;
      return true;
    }
  return false;
}

uint8_t megatron_code(TokenDType dtype) {
  const CodeEntry* e = code_entry(dtype);
  MOEKIT_CHECK(e != nullptr, "Megatron datasets have no ", token_dtype_name(dtype), " token type");
  return e->code;
}

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  MOEKIT_CHECK(file_exists(idx_path()), idx_path(), ": no such file (expected a Megatron dataset prefix ", prefix,
               " with .idx and .bin)");
  MOEKIT_CHECK(file_exists(bin_path()), bin_path(), ": no such file (the .idx exists but its .bin does not)");
  idx_ = MappedFile(idx_path());
  bin_ = MappedFile(bin_path());
  validate();
}

// The rules, in order; each failure names the file, the field and the values involved:
//  1. .idx size >= 34 (the header);  2. magic;  3. version == 1;
//  4. dtype code one of Megatron's integer types: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
//     8 uint16 (preprocess_data.py picks uint16 or int32; the reader takes them all);
//  5. 34 + 12 S + 8 D (+ S for multimodal) == .idx size, computed without overflow;
//  6. every sequence length >= 0;
//  7. sequence_pointers monotone, starting at 0, and pointer[i+1] == pointer[i] + len[i]*itemsize;
//  8. last pointer + last length * itemsize == .bin size;
//  9. document_indices: D >= 1, first == 0, non-decreasing, last == S.
void IndexedDataset::validate() {
  const std::string ip = idx_path();
  const uint64_t size = idx_.size();
  const uint8_t* p = idx_.data();
  MOEKIT_CHECK(size >= static_cast<uint64_t>(kMegatronHeaderBytes), ip, ": truncated: ", size,
               " bytes, the Megatron .idx header alone is ", kMegatronHeaderBytes);
  MOEKIT_CHECK(std::memcmp(p, kMegatronMagic, 9) == 0, ip,
               ": bad magic (expected \"MMIDIDX\\0\\0\", not a Megatron indexed dataset index)");
  const uint64_t version = load_le<uint64_t>(p + 9);
  MOEKIT_CHECK(version == 1, ip, ": version is ", version, ", expected 1");
  dtype_code_ = p[17];
  MOEKIT_CHECK(megatron_token_dtype(dtype_code_, &dtype_), ip, ": dtype code ", static_cast<int>(dtype_code_),
               " is not a token dtype (expected one of Megatron's integer codes: 1 = uint8, 2 = int8, 3 = int16, "
               "4 = int32, 5 = int64, 8 = uint16)");
  const uint64_t s = load_le<uint64_t>(p + 18);
  const uint64_t d = load_le<uint64_t>(p + 26);
  // Bound S and D by the file size before any arithmetic so 12*S + 8*D cannot overflow.
  const uint64_t body = size - kMegatronHeaderBytes;
  MOEKIT_CHECK(s <= body / 12 && d <= body / 8, ip, ": sequence_count ", s, " and document_count ", d,
               " need more than the file's ", size, " bytes");
  const uint64_t expect = kMegatronHeaderBytes + 12 * s + 8 * d;
  if (size == expect) {
    multimodal_ = false;
  } else if (size == expect + s && s > 0) {
    multimodal_ = true;  // trailing int8 sequence_modes; tokens are read the same way
  } else {
    MOEKIT_FAIL(ip, ": size ", size, " bytes does not match the header: 34 + 12 * sequence_count (", s,
                ") + 8 * document_count (", d, ") = ", expect, " (or ", expect + s, " with sequence_modes)");
  }
  num_sequences_ = static_cast<int64_t>(s);
  num_doc_indices_ = static_cast<int64_t>(d);
  lengths_at_ = kMegatronHeaderBytes;
  pointers_at_ = lengths_at_ + 4 * num_sequences_;
  doc_indices_at_ = pointers_at_ + 8 * num_sequences_;

  const int64_t item = token_itemsize(dtype_);
  int64_t expected_ptr = 0;  // bytes
  const uint64_t bin_size = bin_.size();
  for (int64_t i = 0; i < num_sequences_; ++i) {
    // The sum stays <= the .bin size + one step (< 2^31 * 8 bytes): it cannot overflow.
    MOEKIT_CHECK(static_cast<uint64_t>(expected_ptr) <= bin_size, bin_path(), ": size ", bin_size, " bytes, but ", ip,
                 " describes more: sequences [0, ", i, ") alone take ", expected_ptr, " bytes");
    const int32_t len = sequence_length(i);
    MOEKIT_CHECK(len >= 0, ip, ": sequence_lengths[", i, "] = ", len, " is negative");
    const int64_t ptr = sequence_pointer(i);
    MOEKIT_CHECK(ptr >= 0, ip, ": sequence_pointers[", i, "] = ", ptr, " is negative");
    if (i > 0) {
      MOEKIT_CHECK(ptr >= sequence_pointer(i - 1), ip, ": sequence_pointers not monotone: [", i - 1, "] = ",
                   sequence_pointer(i - 1), " > [", i, "] = ", ptr);
    }
    MOEKIT_CHECK(ptr == expected_ptr, ip, ": sequence_pointers[", i, "] = ", ptr, ", expected ", expected_ptr,
                 " (previous pointer + previous length * ", item, " bytes)");
    expected_ptr += static_cast<int64_t>(len) * item;
  }
  MOEKIT_CHECK(static_cast<uint64_t>(expected_ptr) == bin_size, bin_path(), ": size ", bin_size,
               " bytes, but ", ip, " describes ", expected_ptr, " bytes (last sequence_pointer + last length * ",
               item, ")");
  num_tokens_ = expected_ptr / item;

  MOEKIT_CHECK(num_doc_indices_ >= 1, ip, ": document_count is 0; document_indices must hold at least [0]");
  MOEKIT_CHECK(document_index(0) == 0, ip, ": document_indices[0] = ", document_index(0), ", expected 0");
  for (int64_t k = 1; k < num_doc_indices_; ++k) {
    MOEKIT_CHECK(document_index(k) >= document_index(k - 1), ip, ": document_indices not non-decreasing: [", k - 1,
                 "] = ", document_index(k - 1), " > [", k, "] = ", document_index(k));
  }
  MOEKIT_CHECK(document_index(num_doc_indices_ - 1) == num_sequences_, ip, ": document_indices[",
               num_doc_indices_ - 1, "] = ", document_index(num_doc_indices_ - 1),
               ", expected sequence_count = ", num_sequences_);
}

int32_t IndexedDataset::sequence_length(int64_t i) const {
  return load_le<int32_t>(idx_.data() + lengths_at_ + 4 * i);
}

int64_t IndexedDataset::sequence_pointer(int64_t i) const {
  return load_le<int64_t>(idx_.data() + pointers_at_ + 8 * i);
}

int64_t IndexedDataset::document_index(int64_t k) const {
  return load_le<int64_t>(idx_.data() + doc_indices_at_ + 8 * k);
}

int64_t IndexedDataset::sequence_start_token(int64_t seq) const {
  if (seq >= num_sequences_) return num_tokens_;
  return sequence_pointer(seq) / token_itemsize(dtype_);
}

int64_t IndexedDataset::document_start(int64_t doc) const { return sequence_start_token(document_index(doc)); }

int64_t IndexedDataset::document_length(int64_t doc) const {
  return sequence_start_token(document_index(doc + 1)) - sequence_start_token(document_index(doc));
}

void IndexedDataset::read(int64_t doc, int64_t offset, int64_t count, int64_t* out) const {
  MOEKIT_CHECK(doc >= 0 && doc < num_documents(), prefix_, ": document ", doc, " out of range [0, ", num_documents(),
               ")");
  const int64_t len = document_length(doc);
  MOEKIT_CHECK(offset >= 0 && count >= 0 && offset + count <= len, prefix_, ": tokens [", offset, ", ",
               offset + count, ") out of document ", doc, " of length ", len);
  const int64_t item = token_itemsize(dtype_);
  widen_tokens(bin_.data() + (document_start(doc) + offset) * item, dtype_, count, out);
}

// ---- writer --------------------------------------------------------------------------------

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, int64_t vocab_size)
    : IndexedDatasetWriter(prefix, vocab_size, megatron_optimal_dtype(vocab_size)) {}

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, int64_t vocab_size, TokenDType dtype)
    : prefix_(prefix), vocab_size_(vocab_size), dtype_(dtype), bin_(prefix + ".bin") {
  const CodeEntry* e = code_entry(dtype);
  MOEKIT_CHECK(e != nullptr, prefix, ": Megatron datasets have no ", token_dtype_name(dtype), " token type");
  const int64_t max_vocab = e->max_vocab;
  MOEKIT_CHECK(vocab_size > 0 && vocab_size <= max_vocab, prefix, ": vocab_size ", vocab_size,
               " does not fit ", token_dtype_name(dtype), " tokens (1 to ", max_vocab, ")");
}

template <typename T>
void IndexedDatasetWriter::write_tokens(const T* tokens, int64_t n) {
  MOEKIT_CHECK(!finished_, prefix_, ": tokens added after finish");
  MOEKIT_CHECK(n >= 0 && open_length_ + n <= std::numeric_limits<int32_t>::max(), prefix_, ": document ",
               num_documents(), " has more than ", std::numeric_limits<int32_t>::max(),
               " tokens; Megatron sequence lengths are int32");
  const int item = token_itemsize(dtype_);
  scratch_.resize(static_cast<size_t>(n) * item);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tokens[i];
    MOEKIT_CHECK(t >= 0 && t < vocab_size_, prefix_, ": document ", num_documents(), " offset ", open_length_ + i,
                 ": token id ", t, " out of range [0, ", vocab_size_, ")");
    // Little-endian host (file_io.h): the low `item` bytes of t are the stored value.
    std::memcpy(&scratch_[static_cast<size_t>(item * i)], &t, static_cast<size_t>(item));
  }
  bin_.write(scratch_.data(), scratch_.size());
  open_length_ += n;
  num_tokens_ += n;
}

void IndexedDatasetWriter::add_document(const int64_t* tokens, int64_t n) {
  MOEKIT_CHECK(open_length_ == 0, prefix_, ": add_document while document ", num_documents(), " is open");
  write_tokens(tokens, n);
  end_document();
}

void IndexedDatasetWriter::append_tokens(const int32_t* tokens, int64_t n) { write_tokens(tokens, n); }

void IndexedDatasetWriter::end_document() {
  lengths_.push_back(static_cast<int32_t>(open_length_));
  open_length_ = 0;
}

void IndexedDatasetWriter::finish() {
  MOEKIT_CHECK(!finished_, prefix_, ": finish called twice");
  MOEKIT_CHECK(open_length_ == 0, prefix_, ": finish while document ", num_documents(), " is open");
  AtomicWriter idx(prefix_ + ".idx");
  idx.write(kMegatronMagic, 9);
  idx.write_value<uint64_t>(1);
  idx.write_value<uint8_t>(megatron_code(dtype_));
  const uint64_t s = lengths_.size();
  idx.write_value<uint64_t>(s);
  idx.write_value<uint64_t>(s + 1);  // document level: one sequence per document
  idx.write(lengths_.data(), lengths_.size() * sizeof(int32_t));
  std::vector<int64_t> buf(s);
  int64_t ptr = 0;
  for (uint64_t i = 0; i < s; ++i) {
    buf[i] = ptr;
    ptr += static_cast<int64_t>(lengths_[i]) * token_itemsize(dtype_);
  }
  idx.write(buf.data(), buf.size() * sizeof(int64_t));
  buf.resize(s + 1);
  for (uint64_t k = 0; k <= s; ++k) buf[k] = static_cast<int64_t>(k);
  idx.write(buf.data(), buf.size() * sizeof(int64_t));
  // Sync both before renaming either; the .bin goes first so that a crash between the renames
  // leaves an old .idx that the reader's .bin size check rejects, never a silent mismatch.
  bin_.sync();
  idx.sync();
  bin_.commit();
  idx.commit();
  finished_ = true;
}

}  // namespace moekit::data
