// ParamStore: every parameter of a model, by Hugging Face name, in two flat f32 arenas —
// dense (replicated on every rank) and expert (this rank's experts) — with a gradient arena of
// the same layout. Per-expert tensors of one layer are allocated back to back, so an expert
// stack (E, I, H) can be addressed as one block by the grouped expert kernels.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moekit::model {

enum class ParamInit { kNormal, kZero, kOne };

struct ParamSpec {
  std::string name;
  Shape shape;
  ParamInit init = ParamInit::kNormal;
  bool expert = false;
  int64_t offset = 0;  // in its arena, elements
  int64_t numel() const { return shape_numel(shape); }
};

// A parameter and its gradient.
struct Param {
  float* w = nullptr;
  float* g = nullptr;
};

class ParamStore {
 public:
  // Declare a parameter; storage is allocated by finalize().
  void declare(const std::string& name, Shape shape, ParamInit init, bool expert = false);
  void finalize();

  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const ParamSpec& spec(const std::string& name) const;
  Param get(const std::string& name);
  const std::vector<ParamSpec>& specs() const { return specs_; }  // declaration order

  // Seeded init, HF style: weights ~ N(0, std), biases 0, norm weights 1. Each tensor draws from
  // the counter RNG keyed by (seed, name), so values do not depend on layout or threads.
  void init(uint64_t seed, double std);
  void zero_grad();

  int64_t numel(bool expert) const { return static_cast<int64_t>(values_[expert].size()); }
  int64_t numel() const { return numel(false) + numel(true); }
  float* values(bool expert) { return values_[expert].data(); }
  float* grads(bool expert) { return grads_[expert].data(); }
  const float* values(bool expert) const { return values_[expert].data(); }
  const float* grads(bool expert) const { return grads_[expert].data(); }

 private:
  std::vector<ParamSpec> specs_;
  std::map<std::string, size_t> index_;
  std::vector<float> values_[2], grads_[2];
  bool finalized_ = false;
};

}  // namespace moekit::model
