// ShardWriter: a streaming HF sharded safetensors writer. The full list of tensors (names,
// dtypes, shapes) is known up front, so shard assignment and every data offset are fixed
// before any data exists: the headers are written first and tensor bytes are then written in
// place with pwrite, in any order and from any thread. This is what lets `moekit upcycle` emit
// a 28 GB checkpoint while holding one layer in memory, and keeps the bytes identical whatever
// the thread count. Same conventions as write_sharded (safetensors.h): greedy split in the
// given order at max_shard_bytes, model.safetensors for one shard, else
// model-0000i-of-0000N.safetensors + model.safetensors.index.json, __metadata__ {"format":"pt"}.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moekit::checkpoint {

struct ShardEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
};

struct ShardWriterOptions {
  uint64_t max_shard_bytes = 5000000000ull;
  // Each header is padded with spaces (as the format allows) so that the data section starts
  // at a multiple of this: 8 is the reference writer's layout; 4096 lets whole blocks of
  // block-aligned tensors go out with O_DIRECT.
  uint64_t data_alignment = 8;
  // Write the 4 KiB-aligned part of each piece with O_DIRECT, bypassing the page cache, whose
  // copy and writeback cost more CPU than the conversion itself on small machines. Pieces or
  // parts that are not aligned (in the file and in memory), and file systems without O_DIRECT,
  // use ordinary buffered writes; the bytes on disk are the same either way.
  bool direct_io = false;
};

class ShardWriter {
 public:
  // Lays the tensors out (in order) into shards of at most max_shard_bytes (a larger tensor
  // gets a shard of its own), creates the shard files in `dir` (which must exist), writes
  // their headers and reserves their full size on disk, so a full disk fails here, before any
  // data is produced. Throws moekit::Error naming the file.
  ShardWriter(const std::string& dir, std::vector<ShardEntry> tensors,
              uint64_t max_shard_bytes = 5000000000ull);
  ShardWriter(const std::string& dir, std::vector<ShardEntry> tensors, const ShardWriterOptions& opt);
  static constexpr uint64_t kDirectAlign = 4096;
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  size_t num_tensors() const { return tensors_.size(); }
  size_t index(const std::string& name) const;  // throws if unknown
  const ShardEntry& entry(size_t t) const { return tensors_[t].entry; }
  uint64_t nbytes(size_t t) const { return tensors_[t].nbytes; }
  uint64_t total_bytes() const { return total_; }
  size_t num_shards() const { return shards_.size(); }
  std::vector<std::string> shard_names() const;
  uint64_t direct_bytes() const { return direct_bytes_.load(); }  // bytes written with O_DIRECT

  // Write bytes [offset, offset + n) of tensor t. Thread-safe; each byte of each tensor must
  // be written exactly once before finish().
  void write(size_t t, uint64_t offset, const void* data, size_t n);
  // Checks every tensor got all its bytes, fsyncs and closes the shards, then writes the
  // index json (sharded case). After finish() the directory is a complete checkpoint.
  void finish();

 private:
  struct Tensor {
    ShardEntry entry;
    uint64_t nbytes = 0;
    size_t shard = 0;
    uint64_t file_offset = 0;  // absolute offset of the first data byte in the shard file
    std::unique_ptr<std::atomic<uint64_t>> written;
  };
  struct Shard {
    std::string name, path;
    int fd = -1;
    int dfd = -1;  // O_DIRECT descriptor, or -1
    std::unique_ptr<std::atomic<bool>> direct_ok;
    uint64_t size = 0;
  };
  void write_at(Shard& sh, const char* p, size_t n, uint64_t abs);
  std::string dir_;
  std::vector<Tensor> tensors_;
  std::vector<Shard> shards_;
  std::map<std::string, size_t> by_name_;
  uint64_t total_ = 0;
  bool finished_ = false;
  std::atomic<uint64_t> direct_bytes_{0};
};

}  // namespace moekit::checkpoint
