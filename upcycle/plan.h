// The neuron plan: where every neuron of every expert comes from. One algorithm serves all three
// modes (Qwen2 report §2.2.2 with the knobs the modes turn):
//   replicate the dense FFN C = ceil(n * h_E / h_FFN) times (n = routed + shared chunks);
//   permute each copy along the intermediate dimension (qwen mode only; copy and
//   virtual_group keep the identity); concatenate; cut n consecutive chunks of h_E neurons and
//   discard the rest; the shared chunks (first or last S) are fused into one shared expert.
// copy mode is the case h_E = h_FFN; virtual_group the case h_FFN = G * h_E, where routed
// expert j then holds dense shard j mod G, as in Megatron-Core's granular upcycling.
// A neuron is whole: gate row, up row and down column of dense neuron d move together.
// Every random choice is a pure function of (seed, a name, an index): see plan_stream_name().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "upcycle/recipe.h"

namespace moekit::upcycle {

struct Geometry {
  int64_t hidden = 0;        // H
  int64_t dense_width = 0;   // h_FFN
  int64_t expert_width = 0;  // h_E
  int64_t routed = 0;        // E
  int64_t shared = 0;        // S chunks in the shared expert (width S * h_E)
  int64_t chunks = 0;        // n = E + S
  int64_t copies = 0;        // C
  int64_t granularity = 1;   // G = h_FFN / h_E (virtual_group), else 1
  bool shuffle = false;      // qwen mode permutes each copy
  int64_t routed_chunk0 = 0;  // chunk of routed expert 0 (routed experts are consecutive)
  int64_t shared_chunk0 = 0;  // first shared chunk
  int64_t shared_width() const { return shared * expert_width; }
};
Geometry make_geometry(const Recipe& r, const config::ModelConfig& dense);

// Multipliers applied to the finished expert tensors (output_scaling), and whether the step-0
// MoE reproduces the dense model exactly (up to float rounding).
struct Scales {
  double routed_gate_up = 1, routed_down = 1;
  double shared_gate_up = 1, shared_down = 1;
  bool function_preserving = false;
  std::string note;  // why (not), for the log and the plan
};
Scales output_scales(const Recipe& r, const Geometry& g);

// Plan of one sparse layer. Expert neurons are listed routed expert by routed expert, then the
// shared expert: source copy and dense neuron index of each.
struct LayerPlan {
  int64_t layer = 0;
  std::vector<int32_t> perm;          // (C, h_FFN): dense neuron at position p of copy c
  std::vector<int32_t> routed_copy;   // (E, h_E)
  std::vector<int32_t> routed_index;  // (E, h_E)
  std::vector<int32_t> shared_copy;   // (S * h_E)
  std::vector<int32_t> shared_index;  // (S * h_E)
  // Neuron-mode re-initialisation: 1 where the neuron is re-initialised (empty otherwise).
  std::vector<int32_t> routed_reinit;  // (E, h_E)
  std::vector<int32_t> shared_reinit;  // (S * h_E)
};
LayerPlan make_layer_plan(const Recipe& r, const Geometry& g, int64_t layer);

// Seeded uniform permutation of [0, n) (Fisher-Yates driven by the counter RNG keyed by
// (seed, stream)); the first `take` entries of it are a uniform sample without replacement.
std::vector<int32_t> seeded_permutation(uint64_t seed, const std::string& stream, int64_t n);

// Names of the RNG streams, so the plan file and the docs can say exactly what drew what.
std::string shuffle_stream_name(int64_t layer, int64_t copy);     // copy permutation
std::string neuron_stream_name(const std::string& expert_prefix);  // neuron-mode selection

// "model.layers.3.mlp.experts.5." / "model.layers.3.mlp.shared_expert."
std::string expert_prefix(int64_t layer, int64_t expert);
std::string shared_prefix(int64_t layer);

}  // namespace moekit::upcycle
