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
// Mean and (population) standard deviation, summed in a fixed order (deterministic): each
// block of kStatsBlock values in double, then the block sums in order.
constexpr int64_t kStatsBlock = 4096;
TensorStats tensor_stats(const float* x, int64_t n);
// The same in pieces: the sums of blocks [b0, b1) of x[0, n) (block b covers
// [b * kStatsBlock, min(n, (b + 1) * kStatsBlock))), then the stats from all the blocks'
// sums. Pieces can run on different threads; the result equals tensor_stats bit for bit.
void block_sums(const float* x, int64_t n, int64_t b0, int64_t b1, double* sum, double* sq);
TensorStats stats_of_blocks(const double* sum, const double* sq, int64_t n);

// One layer's dense FFN in f32. gate and up in HF layout (D, H). down in panels of 16 hidden
// rows: panel g holds rows 16g .. 16g+15 transposed, (D, 16), so
//   down_p[(g * D + j) * 16 + k] = down[16 g + k][j]   (zero past the last row).
// An expert's down projection takes a dense column per neuron: 16 rows of a column are then one
// cache line, and the lines a group of 16 rows needs are one contiguous 64 * D bytes.
constexpr int64_t kDownPanel = 16;
struct DenseFfn {
  int64_t width = 0, hidden = 0;  // D = h_FFN, H
  std::vector<float> gate, up, down_p;
  TensorStats gate_stats, up_stats, down_stats;  // of the tensors as stored (down in HF layout)
};

// Panels [g0, g1) of down_p (above) from the HF-layout down (hidden, dense) matrix. Disjoint
// ranges of panels can be packed on different threads.
void pack_down_panels(const float* down, int64_t hidden, int64_t dense, int64_t g0, int64_t g1, float* down_p);

// Rows [r0, r1) of an expert's down projection before re-initialisation:
//   out[(h - r0) * width + j] = down[h][src_index[j]], read from the panels.
void gather_down_rows(float* out, const int32_t* src_index, int64_t width, const float* down_p, int64_t dense,
                      int64_t hidden, int64_t r0, int64_t r1);

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
// width floats. Returns how many elements were re-initialised.
uint64_t fill_expert_rows(float* out, const ExpertTensorSpec& s, const DenseFfn& d, int64_t r0, int64_t r1,
                          float* scratch);

// Router (E, H), rows [r0, r1): N(0, std) from the tensor's stream, or zero. With group > 1
// (virtual groups), expert e gets base row e / group, so each group's rows are identical.
void fill_router_rows(float* out, const PhiloxKey& key, int64_t hidden, int64_t r0, int64_t r1, bool zero,
                      float std, int64_t group);

}  // namespace moekit::upcycle
