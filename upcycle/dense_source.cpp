// DenseSource: open + validate a dense Qwen checkpoint, ranged f32/raw reads through the
// Qwen v1 name mapping of checkpoint/hf_checkpoint.h.
#include "upcycle/dense_source.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/check.h"
#include "core/log.h"
#include "model/model.h"

namespace moekit::upcycle {

namespace fs = std::filesystem;

DenseSource DenseSource::open(const std::string& dir) {
  std::error_code ec;
  MOEKIT_CHECK(fs::is_directory(dir, ec), "dense checkpoint '", dir, "' does not exist or is not a directory");
  DenseSource d;
  d.dir_ = dir;
  d.cfg_ = config::load_model_config(dir);
  MOEKIT_CHECK(d.cfg_.model_type == "qwen2", dir, ": the dense checkpoint is already a mixture of experts (model_type ",
               d.cfg_.model_type, "); upcycle needs a dense Qwen model (model_type qwen2 or qwen)");
  // Qwen's attention has q/k/v biases; a model without them (a moekit export of a qkv_bias:
  // false model, whose zero biases make transformers 4.45 load it right) would upcycle into a
  // directory without the bias tensors transformers 4.45's Qwen2-MoE builds.
  MOEKIT_CHECK(d.cfg_.qkv_bias, dir, ": qkv_bias is false; upcycle takes Qwen checkpoints, whose attention has "
               "q/k/v biases (an MoE without them cannot be written so that transformers 4.45 loads it right)");
  d.st_ = checkpoint::SafetensorsDir::open(dir);
  d.layout_ = checkpoint::detect_layout(d.st_);

  model::ParamStore specs;
  model::declare_model_params(d.cfg_, &specs);
  const int64_t qkv_rows =
      (d.cfg_.num_attention_heads + 2 * d.cfg_.num_key_value_heads) * d.cfg_.head_size();
  std::set<std::string> used;
  for (const auto& spec : specs.specs()) {
    Entry e;
    e.src = checkpoint::hf_source(d.layout_, spec.name, d.cfg_);
    e.shape = spec.shape;
    const std::string what = e.src.name == spec.name ? "" : " (the Qwen v1 source of '" + spec.name + "')";
    MOEKIT_CHECK(d.st_.has(e.src.name), dir, ": missing tensor '", e.src.name, "'", what, "; expected shape ",
                 shape_str(spec.shape));
    const checkpoint::TensorInfo& info = d.st_.info(e.src.name);
    MOEKIT_CHECK(info.dtype_supported() && dtype_is_float(info.dtype), dir, ": tensor '", e.src.name, "' has dtype ",
                 info.dtype_name, "; expected BF16, F16 or F32");
    Shape want = spec.shape;
    if (e.src.slice) want[0] = qkv_rows;  // fused [q; k; v]
    MOEKIT_CHECK(info.shape == want, dir, ": tensor '", e.src.name, "'", what, " has shape ", shape_str(info.shape),
                 ", expected ", shape_str(want), " for this config (", d.cfg_.num_hidden_layers, " layers, hidden ",
                 d.cfg_.hidden_size, ", intermediate ", d.cfg_.intermediate_size, ")");
    e.dtype = info.dtype;
    e.elem0 = e.src.slice ? e.src.row0 * (spec.shape.size() == 2 ? spec.shape[1] : 1) : 0;
    used.insert(e.src.name);
    d.total_bytes_ += static_cast<uint64_t>(spec.numel()) * dtype_size(e.dtype);
    d.names_.push_back(spec.name);
    d.entries_.push_back(std::move(e));
  }
  for (const std::string& name : d.st_.names()) {
    if (used.count(name) || checkpoint::hf_ignorable(name)) continue;
    if (d.cfg_.tie_word_embeddings && name == "lm_head.weight") {
      log_warn(dir, ": ignoring lm_head.weight (tie_word_embeddings is true)");
      continue;
    }
    MOEKIT_FAIL(dir, ": unexpected tensor '", name, "' for a dense ", d.layout_name(), " model with ",
                d.cfg_.num_hidden_layers, " layers (is config.json from another model?)");
  }
  return d;
}

const char* DenseSource::layout_name() const {
  return layout_ == checkpoint::HfLayout::kQwenV1 ? "qwen-v1" : "qwen2";
}

const DenseSource::Entry& DenseSource::entry(const std::string& name) const {
  auto it = std::find(names_.begin(), names_.end(), name);
  MOEKIT_CHECK(it != names_.end(), dir_, ": the dense model has no parameter '", name, "'");
  return entries_[static_cast<size_t>(it - names_.begin())];
}

Shape DenseSource::shape(const std::string& name) const { return entry(name).shape; }
DType DenseSource::dtype(const std::string& name) const { return entry(name).dtype; }

void DenseSource::read_raw(const std::string& name, int64_t e0, int64_t n, void* dst) const {
  const Entry& e = entry(name);
  MOEKIT_CHECK(e0 >= 0 && n >= 0 && e0 + n <= shape_numel(e.shape), dir_, ": read of elements [", e0, ", ",
               e0 + n, ") is outside '", name, "' ", shape_str(e.shape));
  const uint64_t es = dtype_size(e.dtype);
  st_.read_raw_range(e.src.name, static_cast<uint64_t>(e.elem0 + e0) * es, static_cast<size_t>(n) * es, dst);
}

void DenseSource::read_f32(const std::string& name, int64_t e0, int64_t n, float* dst) const {
  const DType t = dtype(name);
  if (t == DType::kF32) {
    read_raw(name, e0, n, dst);
    return;
  }
  // Half-width source: bounded staging buffer per thread, widened exactly.
  constexpr int64_t kStage = int64_t{1} << 20;
  thread_local std::vector<uint16_t> stage;
  stage.resize(static_cast<size_t>(std::min(n, kStage)));
  for (int64_t off = 0; off < n; off += kStage) {
    const int64_t m = std::min(kStage, n - off);
    read_raw(name, e0 + off, m, stage.data());
    to_f32(dst + off, stage.data(), t, static_cast<size_t>(m));
  }
}

}  // namespace moekit::upcycle
