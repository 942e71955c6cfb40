// Counter-based RNG (Philox-4x32-10, Salmon et al., SC'11). A stream is keyed by (seed, name)
// and indexed by element: value i of parameter "model.layers.3.mlp.gate.weight" is the same
// whatever the thread count, the rank that computes it, or the order of computation.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/half.h"

namespace moekit {

using Philox4 = std::array<uint32_t, 4>;

// One Philox-4x32-10 block: 4 random 32-bit words for counter `ctr` under key (k0, k1).
Philox4 philox4x32(Philox4 ctr, uint32_t k0, uint32_t k1);

// 64-bit FNV-1a of a name, the stream id.
uint64_t name_hash(std::string_view name);

class CounterRng {
 public:
  CounterRng(uint64_t seed, std::string_view name);
  // Uniform in (0, 1), never 0 or 1 (24 bits of mantissa, offset by half a step).
  float uniform(uint64_t index) const;
  // Standard normal (Box-Muller on the first two words of the block for `index`).
  float normal(uint64_t index) const;
  // Raw 4 words for `index` (e.g. for permutations that need integers).
  Philox4 bits(uint64_t index) const;

  void fill_normal(float* out, size_t n, float mean, float std, uint64_t offset = 0) const;
  void fill_uniform(float* out, size_t n, float lo, float hi, uint64_t offset = 0) const;

 private:
  uint32_t k0_, k1_;
};

}  // namespace moekit
