// The plan file written into every upcycled checkpoint (OUT/upcycle/), so a result can be
// analysed and tested without moekit:
//   plan.json         recipe, geometry, scaling, the re-init rule with its threshold and stream
//                     naming, per-layer dense statistics and per-expert re-init counts;
//   plan.safetensors  I32 arrays per sparse layer N:
//     layers.N.perm                      (C, h_FFN)  dense neuron at position p of shuffled copy c
//     layers.N.experts.source_copy       (E, h_E)    copy each routed-expert neuron came from
//     layers.N.experts.source_index      (E, h_E)    its dense neuron index
//     layers.N.shared_expert.source_copy (S*h_E), layers.N.shared_expert.source_index (S*h_E)
//     layers.N.experts.reinit_neurons    (E, h_E), layers.N.shared_expert.reinit_neurons
//                                        (S*h_E)     neuron mode only: 1 = re-initialised
//   recipe.yaml       the resolved recipe (every key).
// docs/UPCYCLE.md describes the format; tests/reference/check_upcycle.py reads it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "upcycle/expert_fill.h"
#include "upcycle/plan.h"
#include "upcycle/recipe.h"

namespace moekit::upcycle {

struct LayerRecord {
  int64_t layer = 0;
  bool sparse = false;
  TensorStats gate, up, down;                         // dense FFN statistics
  std::vector<std::array<uint64_t, 3>> routed_reinit;  // per routed expert: gate, up, down
  std::array<uint64_t, 3> shared_reinit{};            // shared expert: gate, up, down
};

struct PlanHeader {
  std::string dense_dir, dense_layout, dense_dtype;
  Geometry geometry;
  Scales scales;
  uint64_t threshold = 0;  // element-mode re-init threshold on the 32-bit word
};

class PlanRecorder {
 public:
  PlanRecorder(const Recipe& recipe, const PlanHeader& header) : recipe_(recipe), header_(header) {}
  void add(const LayerRecord& rec, const LayerPlan* plan);  // plan is null for dense layers
  // Writes DIR/upcycle/{plan.json, plan.safetensors, recipe.yaml}.
  void write(const std::string& dir) const;
  uint64_t reinit_total() const;

 private:
  Recipe recipe_;
  PlanHeader header_;
  std::vector<LayerRecord> records_;
  std::vector<LayerPlan> plans_;  // sparse layers, in order
};

}  // namespace moekit::upcycle
