// ShardWriter: layout (greedy shard split, data offsets), header-first file creation with the
// full size reserved up front, thread-safe pwrite of tensor bytes, completeness check, fsync
// and the index json. The header bytes are those write_safetensors produces for the same
// tensors (same key order, spacing and 8-byte padding), so both writers give identical files.
#include "checkpoint/shard_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "core/check.h"

namespace moekit::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string errno_str(int e) { return std::strerror(e); }

void pwrite_full(int fd, const void* src, size_t n, uint64_t off, const std::string& path) {
  const auto* p = static_cast<const char*>(src);
  while (n > 0) {
    ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int e = errno;
      MOEKIT_FAIL(path, ": write of ", n, " bytes at offset ", off, " failed: ", errno_str(e),
                  (e == ENOSPC || e == EFBIG || e == EDQUOT ? " (disk full or file size limit)" : ""));
    }
    MOEKIT_CHECK(r > 0, path, ": write made no progress at offset ", off);
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
}

// The safetensors header for one shard; `offsets` are relative to the data section.
std::string shard_header(const std::vector<const ShardEntry*>& entries,
                         const std::vector<uint64_t>& begins, const std::vector<uint64_t>& ends) {
  std::string h = "{\"__metadata__\":{\"format\":\"pt\"}";
  for (size_t i = 0; i < entries.size(); ++i) {
    h += ',';
    h += header_entry(entries[i]->name, entries[i]->dtype, entries[i]->shape, begins[i], ends[i]);
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');  // data section 8-byte aligned, as write_safetensors
  return h;
}

}  // namespace

ShardWriter::ShardWriter(const std::string& dir, std::vector<ShardEntry> tensors,
                         uint64_t max_shard_bytes)
    : dir_(dir) {
  MOEKIT_CHECK(max_shard_bytes > 0, dir, ": max_shard_bytes must be positive");
  MOEKIT_CHECK(!tensors.empty(), dir, ": no tensors to write");
  std::error_code ec;
  MOEKIT_CHECK(fs::is_directory(dir, ec), dir, ": output directory does not exist");
  // Greedy split in order, exactly as write_sharded.
  std::vector<std::vector<size_t>> groups(1);
  uint64_t cur = 0;
  tensors_.reserve(tensors.size());
  for (auto& e : tensors) {
    MOEKIT_CHECK(e.name != "__metadata__" && !e.name.empty(), dir, ": invalid tensor name '", e.name, "'");
    MOEKIT_CHECK(by_name_.emplace(e.name, tensors_.size()).second, dir, ": duplicate tensor name '", e.name, "'");
    uint64_t nb = dtype_size(e.dtype);
    for (int64_t d : e.shape) {
      MOEKIT_CHECK(d >= 0, dir, ": tensor '", e.name, "' has negative dimension in ", shape_str(e.shape));
      MOEKIT_CHECK(!__builtin_mul_overflow(nb, static_cast<uint64_t>(d), &nb), dir, ": tensor '", e.name,
                   "' byte size overflows");
    }
    if (!groups.back().empty() && cur + nb > max_shard_bytes) {
      groups.emplace_back();
      cur = 0;
    }
    groups.back().push_back(tensors_.size());
    cur += nb;
    total_ += nb;
    Tensor t;
    t.entry = std::move(e);
    t.nbytes = nb;
    t.shard = groups.size() - 1;
    t.written = std::make_unique<std::atomic<uint64_t>>(0);
    tensors_.push_back(std::move(t));
  }
  const size_t n = groups.size();
  shards_.resize(n);
  for (size_t s = 0; s < n; ++s) {
    Shard& sh = shards_[s];
    if (n == 1) {
      sh.name = "model.safetensors";
    } else {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, n);
      sh.name = name;
    }
    sh.path = (fs::path(dir) / sh.name).string();
    std::vector<const ShardEntry*> entries;
    std::vector<uint64_t> begins, ends;
    uint64_t off = 0;
    for (size_t t : groups[s]) {
      entries.push_back(&tensors_[t].entry);
      begins.push_back(off);
      off += tensors_[t].nbytes;
      ends.push_back(off);
    }
    const std::string header = shard_header(entries, begins, ends);
    MOEKIT_CHECK(header.size() <= kMaxSafetensorsHeader, sh.path, ": header would be ", header.size(),
                 " bytes, over the safetensors limit");
    const uint64_t data_start = 8 + header.size();
    for (size_t i = 0; i < groups[s].size(); ++i) tensors_[groups[s][i]].file_offset = data_start + begins[i];
    sh.size = data_start + off;

    sh.fd = ::open(sh.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    MOEKIT_CHECK(sh.fd >= 0, sh.path, ": cannot create shard: ", errno_str(errno));
    // Reserve the whole file now: a full disk (or a file size limit) is reported before any
    // work is done. File systems without fallocate just grow the file as data arrives.
    if (sh.size > 0 && ::fallocate(sh.fd, 0, 0, static_cast<off_t>(sh.size)) != 0) {
      const int e = errno;
      MOEKIT_CHECK(e == EOPNOTSUPP || e == ENOSYS || e == EINVAL, sh.path, ": cannot reserve ", sh.size,
                   " bytes: ", errno_str(e),
                   (e == ENOSPC || e == EFBIG || e == EDQUOT ? " (disk full or file size limit)" : ""));
    }
    unsigned char len[8];
    const uint64_t hl = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(hl >> (8 * i));
    pwrite_full(sh.fd, len, 8, 0, sh.path);
    pwrite_full(sh.fd, header.data(), header.size(), 8, sh.path);
  }
}

ShardWriter::~ShardWriter() {
  for (Shard& s : shards_)
    if (s.fd >= 0) ::close(s.fd);
}

size_t ShardWriter::index(const std::string& name) const {
  auto it = by_name_.find(name);
  MOEKIT_CHECK(it != by_name_.end(), dir_, ": no output tensor named '", name, "'");
  return it->second;
}

std::vector<std::string> ShardWriter::shard_names() const {
  std::vector<std::string> out;
  for (const Shard& s : shards_) out.push_back(s.name);
  return out;
}

void ShardWriter::write(size_t t, uint64_t offset, const void* data, size_t n) {
  MOEKIT_CHECK(t < tensors_.size(), dir_, ": tensor index ", t, " out of range");
  Tensor& tt = tensors_[t];
  MOEKIT_CHECK(offset <= tt.nbytes && n <= tt.nbytes - offset, dir_, ": write of ", n, " bytes at offset ",
               offset, " runs past the end of tensor '", tt.entry.name, "' (", tt.nbytes, " bytes)");
  const Shard& sh = shards_[tt.shard];
  pwrite_full(sh.fd, data, n, tt.file_offset + offset, sh.path);
  tt.written->fetch_add(n, std::memory_order_relaxed);
}

void ShardWriter::finish() {
  MOEKIT_CHECK(!finished_, dir_, ": finish() called twice");
  for (const Tensor& t : tensors_) {
    const uint64_t w = t.written->load();
    MOEKIT_CHECK(w == t.nbytes, dir_, ": tensor '", t.entry.name, "' got ", w, " of its ", t.nbytes,
                 " bytes (internal error: incomplete write)");
  }
  for (Shard& s : shards_) {
    struct stat st;
    MOEKIT_CHECK(::fstat(s.fd, &st) == 0, s.path, ": fstat failed: ", errno_str(errno));
    MOEKIT_CHECK(static_cast<uint64_t>(st.st_size) == s.size, s.path, ": file is ", st.st_size,
                 " bytes, expected ", s.size);
    MOEKIT_CHECK(::fsync(s.fd) == 0, s.path, ": fsync failed: ", errno_str(errno));
    const int rc = ::close(s.fd);
    s.fd = -1;
    MOEKIT_CHECK(rc == 0, s.path, ": close failed: ", errno_str(errno));
  }
  if (shards_.size() > 1) {
    json weight_map = json::object();
    for (const Tensor& t : tensors_) weight_map[t.entry.name] = shards_[t.shard].name;
    json index = {{"metadata", {{"total_size", total_}}}, {"weight_map", std::move(weight_map)}};
    const std::string text = index.dump(2) + "\n";
    const std::string path = (fs::path(dir_) / "model.safetensors.index.json").string();
    const std::string tmp = path + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    MOEKIT_CHECK(fd >= 0, tmp, ": cannot create: ", errno_str(errno));
    try {
      pwrite_full(fd, text.data(), text.size(), 0, tmp);
      MOEKIT_CHECK(::fsync(fd) == 0, tmp, ": fsync failed: ", errno_str(errno));
    } catch (...) {
      ::close(fd);
      throw;
    }
    MOEKIT_CHECK(::close(fd) == 0, tmp, ": close failed: ", errno_str(errno));
    MOEKIT_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, path, ": rename failed: ", errno_str(errno));
  }
  finished_ = true;
}

}  // namespace moekit::checkpoint
