#include "model/params.h"

#include <algorithm>

#include "core/check.h"
#include "core/rng.h"

namespace moekit::model {

void ParamStore::declare(const std::string& name, Shape shape, ParamInit init, bool expert) {
  MOEKIT_CHECK(!finalized_, "ParamStore: cannot declare '", name, "' after finalize()");
  MOEKIT_CHECK(!index_.count(name), "ParamStore: parameter '", name, "' declared twice");
  ParamSpec s;
  s.name = name;
  s.shape = std::move(shape);
  s.init = init;
  s.expert = expert;
  index_[name] = specs_.size();
  specs_.push_back(std::move(s));
}

void ParamStore::finalize(backend::Backend& be) {
  MOEKIT_CHECK(!finalized_, "ParamStore: finalize() called twice");
  be_ = &be;
  for (auto& s : specs_) {
    s.offset = numel_[s.expert];
    numel_[s.expert] += s.numel();
  }
  const DType ct = be.compute_dtype();
  for (int a = 0; a < 2; ++a) {
    const size_t bytes = static_cast<size_t>(numel_[a]) * sizeof(float);
    values_[a] = backend::Buffer(be, bytes);
    grads_[a] = backend::Buffer(be, bytes);
    be.fill_zero(values_[a].data(), bytes);
    be.fill_zero(grads_[a].data(), bytes);
    if (ct != DType::kF32) {
      compute_[a] = backend::Buffer(be, static_cast<size_t>(numel_[a]) * dtype_size(ct));
      be.fill_zero(compute_[a].data(), static_cast<size_t>(numel_[a]) * dtype_size(ct));
    }
  }
  finalized_ = true;
}

const ParamSpec& ParamStore::spec(const std::string& name) const {
  auto it = index_.find(name);
  MOEKIT_CHECK(it != index_.end(), "no parameter named '", name, "' in this model");
  return specs_[it->second];
}

Param ParamStore::get(const std::string& name) {
  MOEKIT_CHECK(finalized_, "ParamStore: get('", name, "') before finalize()");
  const ParamSpec& s = spec(name);
  float* w = values(s.expert) + s.offset;
  const void* c = w;
  if (compute_[s.expert].data())
    c = static_cast<const char*>(compute_[s.expert].data()) + s.offset * dtype_size(be_->compute_dtype());
  return {w, grads(s.expert) + s.offset, c};
}

void ParamStore::init(uint64_t seed, double std) {
  MOEKIT_CHECK(finalized_, "ParamStore: init() before finalize()");
  std::vector<float> host;
  for (const auto& s : specs_) {
    float* dst = values(s.expert) + s.offset;
    // On the CPU the values are written in place; elsewhere through one tensor of host memory.
    float* w = dst;
    if (!be_->host_memory()) {
      host.resize(static_cast<size_t>(s.numel()));
      w = host.data();
    }
    switch (s.init) {
      case ParamInit::kZero: std::fill(w, w + s.numel(), 0.f); break;
      case ParamInit::kOne: std::fill(w, w + s.numel(), 1.f); break;
      case ParamInit::kNormal:
        CounterRng(seed, s.name).fill_normal(w, static_cast<size_t>(s.numel()), 0.f, static_cast<float>(std));
        break;
    }
    if (w != dst) be_->upload(dst, w, static_cast<size_t>(s.numel()) * sizeof(float));
  }
  mark_values_changed();
}

void ParamStore::zero_grad() {
  for (int a = 0; a < 2; ++a) be_->fill_zero(grads_[a].data(), static_cast<size_t>(numel_[a]) * sizeof(float));
}

void ParamStore::write(const std::string& name, const float* host) {
  const ParamSpec& s = spec(name);
  be_->upload(values(s.expert) + s.offset, host, static_cast<size_t>(s.numel()) * sizeof(float));
  mark_values_changed();
}

void ParamStore::read(const std::string& name, float* host) const {
  const ParamSpec& s = spec(name);
  be_->download(host, values(s.expert) + s.offset, static_cast<size_t>(s.numel()) * sizeof(float));
}

void ParamStore::refresh_compute() {
  if (!compute_stale_) return;
  for (int a = 0; a < 2; ++a)
    if (compute_[a].data()) be_->from_f32(compute_[a].data(), values(a), numel_[a]);
  compute_stale_ = false;
}

}  // namespace moekit::model
