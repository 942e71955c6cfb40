// safetensors reading and writing (single files and sharded directories with
// model.safetensors.index.json). The reader enforces every rule of the reference
// implementation (huggingface/safetensors tensor.rs): header size cap, UTF-8 JSON of the
// expected shape, contiguous hole-free offsets from 0, dtype sizes, checked size arithmetic,
// exact coverage of the file, duplicate names. Writers are atomic (temp file, fsync, rename).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moekit::checkpoint {

constexpr uint64_t kMaxSafetensorsHeader = 100000000;  // bytes, as the reference reader

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;  // meaningful only when dtype_supported()
  Shape shape;
  uint64_t begin = 0, end = 0;  // offsets relative to the data section
  // safetensors spelling ("F32", "U8", "F8_E4M3", ...). Files may list any dtype of the format;
  // only those that map to moekit::DType can be read as tensors.
  std::string dtype_name = "F32";
  size_t nbytes() const { return static_cast<size_t>(end - begin); }
  bool dtype_supported() const {
    DType t;
    return dtype_from_name(dtype_name, &t);
  }
};

// One validated .safetensors file. open() reads and checks the header only; tensor data is
// read on demand with pread, so a reader costs memory only for what is asked for.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);  // throws moekit::Error naming path + rule
  // Validate a whole file image held in memory (used by open() and by tests).
  static SafetensorsFile parse(const std::string& path, const std::string& header_json,
                               uint64_t header_len, uint64_t file_size);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in offset order
  const TensorInfo* find(const std::string& name) const;               // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t data_start() const { return 8 + header_len_; }
  uint64_t file_size() const { return file_size_; }

  // Raw bytes of a tensor into dst (exactly info.nbytes()).
  void read_raw(const TensorInfo& info, void* dst) const;
  // Bytes [byte_offset, byte_offset + n) of a tensor: streaming readers copy a large tensor
  // piece by piece instead of holding all of it.
  void read_raw_range(const TensorInfo& info, uint64_t byte_offset, size_t n, void* dst) const;
  HostTensor read(const std::string& name) const;  // throws if absent
  // Read a floating tensor converted to f32; checks the shape when `expect` is non-empty.
  std::vector<float> read_f32(const std::string& name, const Shape& expect = {}) const;

 private:
  std::string path_;
  uint64_t header_len_ = 0;
  uint64_t file_size_ = 0;
  // The descriptor open() validated, shared by copies: reads see that same inode even if the
  // path is replaced later. Null for a parse()-only file, which has no data to read.
  std::shared_ptr<const int> fd_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: the data pointer is borrowed until write() returns.
struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const void* data = nullptr;
  size_t nbytes() const { return static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype); }
};

// One tensor's header entry, `"name":{"dtype":"BF16","shape":[..],"data_offsets":[b,e]}`, as
// every moekit writer spells it (so the streaming and in-memory writers give identical files).
std::string header_entry(const std::string& name, DType dtype, const Shape& shape, uint64_t begin, uint64_t end);

// Write one file: header `{"__metadata__":..., tensors...}` padded with spaces to a multiple of
// 8 bytes, data in the order given. Temp file in the same directory, fsync, rename.
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// HF sharded save: greedy split at max_shard_bytes (decimal, 5e9 default) in the order given;
// one shard -> model.safetensors, else model-0000i-of-0000n.safetensors + index json with
// metadata.total_size = sum of tensor bytes. Every shard gets __metadata__ {"format":"pt"}.
void write_sharded(const std::string& dir, const std::vector<TensorRef>& tensors,
                   uint64_t max_shard_bytes = 5000000000ull);

// A checkpoint directory: model.safetensors, or model.safetensors.index.json and its shards
// (validated: every shard exists and holds exactly the tensors the index assigns to it), or
// any single *.safetensors file. Tensor names are unique across shards.
class SafetensorsDir {
 public:
  static SafetensorsDir open(const std::string& dir);
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming dir + tensor
  std::vector<std::string> names() const;                 // sorted
  std::vector<float> read_f32(const std::string& name, const Shape& expect = {}) const;
  HostTensor read(const std::string& name) const;
  // Bytes [byte_offset, byte_offset + n) of tensor `name` (see SafetensorsFile::read_raw_range).
  void read_raw_range(const std::string& name, uint64_t byte_offset, size_t n, void* dst) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor -> file index
};

}  // namespace moekit::checkpoint
