// PlanRecorder: collects each layer's plan and statistics while the upcycle streams, then
// writes OUT/upcycle/plan.json, plan.safetensors and recipe.yaml (format in plan_io.h).
#include "upcycle/plan_io.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "upcycle/staging_dir.h"

namespace moekit::upcycle {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

ordered_json stats_json(const TensorStats& s) { return {{"mean", s.mean}, {"std", s.std}}; }

const char* reinit_mode_name(ReinitMode m) { return m == ReinitMode::kElement ? "element" : "neuron"; }

}  // namespace

void PlanRecorder::add(const LayerRecord& rec, const LayerPlan* plan) {
  records_.push_back(rec);
  if (plan != nullptr) plans_.push_back(*plan);
}

uint64_t PlanRecorder::reinit_total() const {
  uint64_t n = 0;
  for (const auto& r : records_) {
    for (const auto& e : r.routed_reinit) n += e[0] + e[1] + e[2];
    n += r.shared_reinit[0] + r.shared_reinit[1] + r.shared_reinit[2];
  }
  return n;
}

void PlanRecorder::write(const std::string& dir) const {
  const fs::path d = fs::path(dir) / "upcycle";
  std::error_code ec;
  fs::create_directories(d, ec);
  MOEKIT_CHECK(!ec, d.string(), ": cannot create: ", ec.message());
  const Recipe& r = recipe_;
  const Geometry& g = header_.geometry;
  ordered_json j;
  j["format"] = "moekit-upcycle-plan";
  j["version"] = 1;
  j["mode"] = mode_name(r.mode);
  j["seed"] = r.seed;
  j["dense"] = {{"dir", header_.dense_dir}, {"layout", header_.dense_layout}, {"dtype", header_.dense_dtype}};
  j["geometry"] = {{"hidden_size", g.hidden},         {"dense_intermediate_size", g.dense_width},
                   {"expert_intermediate_size", g.expert_width}, {"num_experts", g.routed},
                   {"num_shared_experts", g.shared},  {"chunks", g.chunks},
                   {"copies", g.copies},              {"granularity", g.granularity},
                   {"shuffled", g.shuffle},           {"discarded_per_layer", g.copies * g.dense_width - g.chunks * g.expert_width},
                   {"routed_chunk0", g.routed_chunk0}, {"shared_chunk0", g.shared_chunk0}};
  const Scales& s = header_.scales;
  j["scaling"] = {{"kind", scaling_name(r.scaling())},
                  {"routed_gate_up", s.routed_gate_up}, {"routed_down", s.routed_down},
                  {"shared_gate_up", s.shared_gate_up}, {"shared_down", s.shared_down},
                  {"function_preserving", s.function_preserving}, {"note", s.note}};
  j["reinit"] = {
      {"mode", reinit_mode_name(r.reinit_mode)},
      {"ratio", r.ratio()},
      {"distribution", r.reinit_distribution == ReinitDistribution::kSource ? "source" : "init"},
      {"shared", r.reinit_shared},
      {"threshold", header_.threshold},
      {"rule", r.reinit_mode == ReinitMode::kElement
                   ? "element i (row-major) of output tensor T is re-initialised iff word(seed, T, i) < threshold"
                   : "neuron j of an expert is re-initialised iff reinit_neurons[j] == 1 (plan.safetensors): its "
                     "gate/up rows and down column take word-driven normal values"},
      {"word", "word (i mod 64) div 16 of Philox4x32-10 block b = 16 (i div 64) + (i mod 16), counter "
               "(b mod 2^32, b div 2^32, 0, 0), key (h mod 2^32, h div 2^32) with h = fnv1a64(T) xor "
               "(seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) mod 2^64"},
      {"total_reinitialised", reinit_total()}};
  j["streams"] = {{"shuffle", "permutation of copy c in layer L: Fisher-Yates keyed by '" +
                                  shuffle_stream_name(0, 0) + "' with 0 -> L, C"},
                  {"neuron_mask", "neuron mode: first round(ratio*width) entries of a permutation keyed by '" +
                                      neuron_stream_name("<expert prefix>") + "'"}};
  ordered_json layers = ordered_json::array();
  for (const LayerRecord& rec : records_) {
    ordered_json l = {{"layer", rec.layer}, {"kind", rec.sparse ? "sparse" : "dense"}};
    if (rec.sparse) {
      l["dense_stats"] = {{"gate_proj", stats_json(rec.gate)}, {"up_proj", stats_json(rec.up)},
                          {"down_proj", stats_json(rec.down)}};
      l["routed_reinit"] = rec.routed_reinit;
      l["shared_reinit"] = rec.shared_reinit;
    }
    layers.push_back(std::move(l));
  }
  j["layers"] = std::move(layers);
  write_text_file((d / "plan.json").string(), j.dump(1) + "\n");
  write_text_file((d / "recipe.yaml").string(), recipe_to_yaml(r));

  std::vector<checkpoint::TensorRef> refs;
  auto add = [&](const std::string& name, const std::vector<int32_t>& v, Shape shape) {
    if (v.empty()) return;
    refs.push_back({name, DType::kI32, std::move(shape), v.data()});
  };
  for (const LayerPlan& p : plans_) {
    const std::string pre = "layers." + std::to_string(p.layer) + ".";
    add(pre + "perm", p.perm, {g.copies, g.dense_width});
    add(pre + "experts.source_copy", p.routed_copy, {g.routed, g.expert_width});
    add(pre + "experts.source_index", p.routed_index, {g.routed, g.expert_width});
    add(pre + "shared_expert.source_copy", p.shared_copy, {g.shared_width()});
    add(pre + "shared_expert.source_index", p.shared_index, {g.shared_width()});
    add(pre + "experts.reinit_neurons", p.routed_reinit, {g.routed, g.expert_width});
    add(pre + "shared_expert.reinit_neurons", p.shared_reinit, {g.shared_width()});
  }
  checkpoint::write_safetensors((d / "plan.safetensors").string(), refs,
                                {{"format", "moekit-upcycle-plan"}, {"version", "1"}});
}

}  // namespace moekit::upcycle
