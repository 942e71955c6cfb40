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

void ParamStore::finalize() {
  int64_t next[2] = {0, 0};
  for (auto& s : specs_) {
    s.offset = next[s.expert];
    next[s.expert] += s.numel();
  }
  for (int a = 0; a < 2; ++a) {
    values_[a].assign(static_cast<size_t>(next[a]), 0.f);
    grads_[a].assign(static_cast<size_t>(next[a]), 0.f);
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
  return {values_[s.expert].data() + s.offset, grads_[s.expert].data() + s.offset};
}

void ParamStore::init(uint64_t seed, double std) {
  for (const auto& s : specs_) {
    float* w = values_[s.expert].data() + s.offset;
    switch (s.init) {
      case ParamInit::kZero: std::fill(w, w + s.numel(), 0.f); break;
      case ParamInit::kOne: std::fill(w, w + s.numel(), 1.f); break;
      case ParamInit::kNormal:
        CounterRng(seed, s.name).fill_normal(w, static_cast<size_t>(s.numel()), 0.f, static_cast<float>(std));
        break;
    }
  }
}

void ParamStore::zero_grad() {
  for (auto& g : grads_) std::fill(g.begin(), g.end(), 0.f);
}

}  // namespace moekit::model
