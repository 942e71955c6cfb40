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

class ShardWriter {
 public:
  // Lays the tensors out (in order) into shards of at most max_shard_bytes (a larger tensor
  // gets a shard of its own), creates the shard files in `dir` (which must exist), writes
  // their headers and reserves their full size on disk, so a full disk fails here, before any
  // data is produced. Throws moekit::Error naming the file.
  ShardWriter(const std::string& dir, std::vector<ShardEntry> tensors,
              uint64_t max_shard_bytes = 5000000000ull);
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
    uint64_t size = 0;
  };
  std::string dir_;
  std::vector<Tensor> tensors_;
  std::vector<Shard> shards_;
  std::map<std::string, size_t> by_name_;
  uint64_t total_ = 0;
  bool finished_ = false;
};

}  // namespace moekit::checkpoint
