// Resume-time checks of a training checkpoint (see resume_check.h).
#include "train/resume_check.h"

#include <cmath>
#include <limits>
#include <set>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "data/loader.h"
#include "model/model.h"

namespace moekit::train {

namespace {

constexpr const char* kGroups[] = {"master", "exp_avg", "exp_avg_sq"};

void check_meta(const nlohmann::json& m, const std::string& where) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (const char* key : {"optimizer_steps", "tokens", "skipped_steps", "consecutive_skips", "loss_scale_good_steps"}) {
    MOEKIT_CHECK(m.contains(key), where, ": field '", key, "' is missing");
    json_int(m[key], where, key, 0, kMax);
  }
  MOEKIT_CHECK(m.contains("loss_scale") && m.contains("wall_seconds"), where,
               ": fields 'loss_scale' and 'wall_seconds' are required");
  json_number(m["loss_scale"], where, "loss_scale", std::numeric_limits<double>::min(),
              std::numeric_limits<double>::max());
  json_number(m["wall_seconds"], where, "wall_seconds", 0, std::numeric_limits<double>::max());
  if (m.contains("nan_skipped_steps")) json_int(m["nan_skipped_steps"], where, "nan_skipped_steps", 0, kMax);
  MOEKIT_CHECK(m.contains("loader"), where, ": field 'loader' is missing");
  try {
    data::LoaderState::from_json(m["loader"]);
  } catch (const Error& e) {
    MOEKIT_FAIL(where, ": ", e.what());
  }
}

}  // namespace

void check_checkpoint_tensors(const checkpoint::TrainCheckpointReader& r, const config::ModelConfig& model,
                              const char* group) {
  model::ParamStore store;  // every parameter (all experts), declared only
  model::declare_model_params(model, &store);
  std::set<std::string> expected;
  for (const auto& spec : store.specs()) {
    expected.insert(spec.name);
    MOEKIT_CHECK(r.has(group, spec.name), r.dir(), ": has no tensor /", group, "/", spec.name,
                 " (was it written for another model?)");
    r.check_shape(group, spec.name, spec.shape);
  }
  for (const std::string& name : r.names(group))
    MOEKIT_CHECK(expected.count(name), r.dir(), ": holds /", group, "/", name, ", which the ", model.model_type,
                 " model has no parameter for (written for another model?)");
}

std::vector<std::vector<float>> read_expert_bias(const nlohmann::json& meta, const config::ModelConfig& model,
                                                 const std::string& where) {
  std::vector<std::vector<float>> bias(static_cast<size_t>(model.num_hidden_layers));
  if (!model.moe_router_enable_expert_bias) return bias;
  MOEKIT_CHECK(meta.contains("expert_bias") && meta["expert_bias"].is_object(), where,
               ": field 'expert_bias' is missing or not an object, but the model routes with a selection bias ",
               "(moe_router_enable_expert_bias)");
  const nlohmann::json& jb = meta["expert_bias"];
  constexpr double kMax = std::numeric_limits<float>::max();
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) {
    if (!model.is_sparse_layer(l)) continue;
    const std::string name = model::expert_bias_name(l);
    const auto it = jb.find(name);
    MOEKIT_CHECK(it != jb.end() && it->is_array() && static_cast<int64_t>(it->size()) == model.num_experts, where,
                 ": expert_bias '", name, "' must be an array of num_experts (", model.num_experts, ") numbers");
    for (const auto& v : *it) bias[l].push_back(static_cast<float>(json_number(v, where, "expert_bias." + name, -kMax, kMax)));
  }
  return bias;
}

checkpoint::CheckpointCheck resume_check(const config::ModelConfig& model) {
  return [model](const checkpoint::TrainCheckpointReader& r) {
    const std::set<std::string> want(std::begin(kGroups), std::end(kGroups));
    for (const std::string& g : r.groups())
      MOEKIT_CHECK(want.count(g), r.dir(), ": holds a group /", g, " that a moekit training checkpoint does not have");
    for (const char* g : kGroups) check_checkpoint_tensors(r, model, g);
    check_meta(r.meta(), r.dir() + "/meta.json");
    read_expert_bias(r.meta(), model, r.dir() + "/meta.json");
    // Every byte once more, dataset by dataset: checksums, and no NaN or infinity in the state.
    r.verify_all(/*require_finite=*/true);
  };
}

}  // namespace moekit::train
