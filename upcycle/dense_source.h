// The dense checkpoint an upcycle reads: an HF directory in the Qwen2 layout or the original
// Qwen (v1) layout, single file or sharded, BF16/F16/F32. open() validates everything before
// any output exists — config (dense Qwen only), every tensor present with its exact shape and a
// floating dtype, nothing left over — so bad input fails fast and names the tensor. Reads are
// ranged (pread), so callers hold one layer, or one slice of a big tensor, at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "config/model_config.h"

namespace moekit::upcycle {

class DenseSource {
 public:
  static DenseSource open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const config::ModelConfig& config() const { return cfg_; }
  checkpoint::HfLayout layout() const { return layout_; }
  const char* layout_name() const;
  // Qwen2 parameter names of the dense model, in HF order.
  const std::vector<std::string>& names() const { return names_; }
  Shape shape(const std::string& name) const;
  DType dtype(const std::string& name) const;  // on-disk dtype of the source tensor
  // Elements [e0, e0 + n) of a Qwen2 parameter (row-major), converted to f32.
  void read_f32(const std::string& name, int64_t e0, int64_t n, float* dst) const;
  // The same elements as raw bytes of dtype(name).
  void read_raw(const std::string& name, int64_t e0, int64_t n, void* dst) const;
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  struct Entry {
    checkpoint::HfSource src;
    Shape shape;
    DType dtype = DType::kF32;
    int64_t elem0 = 0;  // first element in the source tensor (row slice of c_attn)
  };
  const Entry& entry(const std::string& name) const;

  std::string dir_;
  config::ModelConfig cfg_;
  checkpoint::HfLayout layout_ = checkpoint::HfLayout::kQwen2;
  checkpoint::SafetensorsDir st_;
  std::vector<std::string> names_;
  std::vector<Entry> entries_;  // parallel to names_
  uint64_t total_bytes_ = 0;
};

}  // namespace moekit::upcycle
