// Low-level file plumbing shared by the token formats: token storage dtypes and their
// widening to int64, a read-only memory map whose size is known before any byte is trusted,
// little-endian loads that tolerate the unaligned fields of .idx files, and an atomic writer
// (temp file, fsync, rename) so that no reader ever sees a half-written file.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace moekit::data {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "moekit's token formats are little-endian; a big-endian host needs byte swaps here");

// How token ids are stored on disk. Every reader hands them out as int64 (signed types may hold
// negative ids: the loader's vocabulary check refuses them, naming the file and offset).
enum class TokenDType : uint8_t { kUInt16, kInt32, kUInt32, kUInt8, kInt8, kInt16, kInt64 };

int token_itemsize(TokenDType dtype);
const char* token_dtype_name(TokenDType dtype);
// out[i] = src[i] for n tokens stored as `dtype` (src need not be aligned).
void widen_tokens(const uint8_t* src, TokenDType dtype, int64_t n, int64_t* out);

// Unaligned little-endian load: .idx fields start at offset 34, so int32/int64 arrays in it
// are not naturally aligned; memcpy is the portable way to read them.
template <typename T>
inline T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

bool file_exists(const std::string& path);

// Read-only mapping of a whole file. An empty file maps nothing (data() == nullptr, size 0).
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws moekit::Error naming the path
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Writes PATH through a temp file in the same directory; commit() flushes, fsyncs and renames
// it onto PATH. Destroying an uncommitted writer removes the temp file, so an error (or an
// exception thrown by the caller) leaves no partial output behind.
class AtomicWriter {
 public:
  explicit AtomicWriter(std::string path);
  ~AtomicWriter();
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  void write(const void* bytes, size_t n);
  template <typename T>
  void write_value(const T& v) { write(&v, sizeof(T)); }
  uint64_t bytes_written() const { return written_; }
  // Flush and fsync the temp file, without renaming (for multi-file commits: sync all, then
  // rename in order).
  void sync();
  // sync() then rename onto the final path and fsync the directory.
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_path_;
  std::FILE* file_ = nullptr;
  uint64_t written_ = 0;
  bool synced_ = false, committed_ = false;
};

// Write a small text file atomically (sidecar JSON and the like).
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace moekit::data
