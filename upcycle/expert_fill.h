// Kernels that produce slabs of rows of the upcycled MoE tensors in f32 from one layer's dense
// FFN and its plan: expert gate/up rows (a dense row each), expert down rows (a gather of dense
// columns), element- or neuron-wise re-initialisation, output scaling, routers and shared-expert
// gates. Every value is a pure function of (dense weights, plan, seed, output tensor name,
// element index), so any split of a tensor into slabs, on any thread, gives the same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "upcycle/rng_stream.h"

namespace moekit::upcycle {

struct TensorStats {
  double mean = 0, std = 0;
};
// Mean and (population) standard deviation, summed in a fixed order (deterministic).
TensorStats tensor_stats(const float* x, int64_t n);

// One layer's dense FFN in f32 (HF layout: gate/up (D, H), down (H, D)).
struct DenseFfn {
  int64_t width = 0, hidden = 0;  // D = h_FFN, H
  std::vector<float> gate, up, down;
  TensorStats gate_stats, up_stats, down_stats;
};

enum class Proj { kGate, kUp, kDown };

// How to build one expert tensor (routed expert or shared expert).
struct ExpertTensorSpec {
  Proj proj = Proj::kGate;
  int64_t width = 0;                       // neurons in this expert
  int64_t hidden = 0;                      // H
  const int32_t* src_index = nullptr;      // (width) dense neuron of each expert neuron
  const int32_t* neuron_reinit = nullptr;  // (width) neuron mode: 1 = re-initialise; else null
  uint64_t threshold = 0;                  // element mode: word < threshold re-initialises; 0 none
  float mean = 0, std = 0;                 // re-init distribution
  float scale = 1;                         // applied to the finished values
  PhiloxKey key;                           // stream of (seed, output tensor name)
  int64_t rows() const { return proj == Proj::kDown ? hidden : width; }
  int64_t cols() const { return proj == Proj::kDown ? width : hidden; }
};

// Rows [r0, r1) of the expert tensor into out ((r1 - r0) * cols). `scratch` holds at least
// 2 * width floats. Returns how many elements were re-initialised.
uint64_t fill_expert_rows(float* out, const ExpertTensorSpec& s, const DenseFfn& d, int64_t r0, int64_t r1,
                          float* scratch);

// Router (E, H), rows [r0, r1): N(0, std) from the tensor's stream, or zero. With group > 1
// (virtual groups), expert e gets base row e / group, so each group's rows are identical.
void fill_router_rows(float* out, const PhiloxKey& key, int64_t hidden, int64_t r0, int64_t r1, bool zero,
                      float std, int64_t group);

}  // namespace moekit::upcycle
