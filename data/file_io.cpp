// Token dtypes, read-only memory maps and atomic (temp + fsync + rename) writes.
#include "data/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "core/check.h"

namespace moekit::data {

int token_itemsize(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8: return 1;
    case TokenDType::kInt8: return 1;
    case TokenDType::kUInt16: return 2;
    case TokenDType::kInt16: return 2;
    case TokenDType::kInt32: return 4;
    case TokenDType::kUInt32: return 4;
    case TokenDType::kInt64: return 8;
  }
  return 0;
}

const char* token_dtype_name(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8: return "uint8";
    case TokenDType::kInt8: return "int8";
    case TokenDType::kUInt16: return "uint16";
    case TokenDType::kInt16: return "int16";
    case TokenDType::kInt32: return "int32";
    case TokenDType::kUInt32: return "uint32";
    case TokenDType::kInt64: return "int64";
  }
  return "?";
}

namespace {
template <typename T>
void widen(const uint8_t* src, int64_t n, int64_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int64_t>(load_le<T>(src + sizeof(T) * i));
}
}  // namespace

void widen_tokens(const uint8_t* src, TokenDType dtype, int64_t n, int64_t* out) {
  switch (dtype) {
    case TokenDType::kUInt8: return widen<uint8_t>(src, n, out);
    case TokenDType::kInt8: return widen<int8_t>(src, n, out);
    case TokenDType::kUInt16: return widen<uint16_t>(src, n, out);
    case TokenDType::kInt16: return widen<int16_t>(src, n, out);
    case TokenDType::kInt32: return widen<int32_t>(src, n, out);
    case TokenDType::kUInt32: return widen<uint32_t>(src, n, out);
    case TokenDType::kInt64: return widen<int64_t>(src, n, out);
  }
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// ---- MappedFile ----------------------------------------------------------------------------

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOEKIT_CHECK(fd >= 0, path, ": cannot open (", std::strerror(errno), ")");
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MOEKIT_FAIL(path, ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      MOEKIT_FAIL(path, ": mmap of ", size_, " bytes failed (", std::strerror(err), ")");
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() { release(); }

void MappedFile::release() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

// ---- AtomicWriter --------------------------------------------------------------------------

namespace {
std::string dir_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some filesystems refuse directory fds
  ::fsync(fd);
  ::close(fd);
}
}  // namespace

AtomicWriter::AtomicWriter(std::string path) : path_(std::move(path)) {
  // The pid keeps two concurrent writers of the same path from sharing a temp file.
  tmp_path_ = path_ + ".tmp." + std::to_string(::getpid());
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  MOEKIT_CHECK(file_ != nullptr, path_, ": cannot create temp file ", tmp_path_, " (", std::strerror(errno), ")");
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 20);
}

AtomicWriter::~AtomicWriter() {
  if (file_) std::fclose(file_);
  if (!committed_) std::remove(tmp_path_.c_str());
}

void AtomicWriter::write(const void* bytes, size_t n) {
  MOEKIT_CHECK(file_ && !synced_, path_, ": write after sync/commit");
  if (n == 0) return;
  MOEKIT_CHECK(std::fwrite(bytes, 1, n, file_) == n, path_, ": write of ", n, " bytes failed (", std::strerror(errno),
               ")");
  written_ += n;
}

void AtomicWriter::sync() {
  if (synced_) return;
  MOEKIT_CHECK(std::fflush(file_) == 0, path_, ": flush failed (", std::strerror(errno), ")");
  MOEKIT_CHECK(::fsync(fileno(file_)) == 0, path_, ": fsync failed (", std::strerror(errno), ")");
  std::fclose(file_);
  file_ = nullptr;
  synced_ = true;
}

void AtomicWriter::commit() {
  sync();
  MOEKIT_CHECK(std::rename(tmp_path_.c_str(), path_.c_str()) == 0, path_, ": rename from ", tmp_path_, " failed (",
               std::strerror(errno), ")");
  committed_ = true;
  fsync_dir(dir_of(path_));
}

void write_file_atomic(const std::string& path, const std::string& text) {
  AtomicWriter w(path);
  w.write(text.data(), text.size());
  w.commit();
}

}  // namespace moekit::data
