// ParamStore: every parameter of a model, by Hugging Face name, in two flat f32 arenas on the
// model's backend — dense (replicated on every rank) and expert (this rank's experts) — with a
// gradient arena of the same layout, and, where the backend computes in another type (bf16 on
// GPUs), a copy of the values in that type for the GEMMs. Per-expert tensors of one layer are
// allocated back to back, so an expert stack (E, I, H) can be addressed as one block by the
// grouped expert kernels.
//
// The arenas are device memory: on the CPU backend the pointers are host pointers and may be
// used directly; elsewhere values move through write()/read() (or the backend's copies).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "backend/backend.h"
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

// A parameter: f32 values, f32 gradient, and what the GEMMs read (the values themselves when the
// backend computes in f32, else their copy in the compute type).
struct Param {
  float* w = nullptr;
  float* g = nullptr;
  const void* c = nullptr;
};

class ParamStore {
 public:
  // Declare a parameter; storage is allocated by finalize().
  void declare(const std::string& name, Shape shape, ParamInit init, bool expert = false);
  // Allocates the arenas on `be` (values and gradients zeroed).
  void finalize(backend::Backend& be = backend::cpu());

  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const ParamSpec& spec(const std::string& name) const;
  Param get(const std::string& name);
  const std::vector<ParamSpec>& specs() const { return specs_; }  // declaration order
  backend::Backend& backend() const { return *be_; }

  // Seeded init, HF style: weights ~ N(0, std), biases 0, norm weights 1. Each tensor draws from
  // the counter RNG keyed by (seed, name), so values do not depend on layout or threads.
  void init(uint64_t seed, double std);
  void zero_grad();
  // One tensor's values (numel f32) from / to host memory.
  void write(const std::string& name, const float* host);
  void read(const std::string& name, float* host) const;
  // The compute-type copy from the values, when something other than the optimizer changed them
  // (init, write, direct writes through values()); the model calls it before a forward.
  void refresh_compute();
  void mark_values_changed() { compute_stale_ = compute_[0].data() || compute_[1].data(); }

  int64_t numel(bool expert) const { return numel_[expert]; }
  int64_t numel() const { return numel(false) + numel(true); }
  float* values(bool expert) { return values_[expert].as<float>(); }
  float* grads(bool expert) { return grads_[expert].as<float>(); }
  const float* values(bool expert) const { return values_[expert].as<float>(); }
  const float* grads(bool expert) const { return grads_[expert].as<float>(); }
  // The compute-type copy of an arena (null when the backend computes in f32).
  void* compute(bool expert) { return compute_[expert].data(); }

 private:
  std::vector<ParamSpec> specs_;
  std::map<std::string, size_t> index_;
  backend::Backend* be_ = &backend::cpu();
  int64_t numel_[2] = {0, 0};
  backend::Buffer values_[2], grads_[2], compute_[2];
  bool finalized_ = false, compute_stale_ = false;
};

}  // namespace moekit::model
