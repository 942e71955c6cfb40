// Expert, router and shared-gate slab kernels (see expert_fill.h). The random values come from
// rng_stream's element-indexed streams; the element index is the flat row-major index in the
// output tensor, which is what makes slabs independent of each other.
#include "upcycle/expert_fill.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"

namespace moekit::upcycle {

TensorStats tensor_stats(const float* x, int64_t n) {
  TensorStats s;
  if (n <= 0) return s;
  // Blocks of 4096 summed in double, then the block sums in order: fixed order, no drift.
  double sum = 0, sq = 0;
  for (int64_t b = 0; b < n; b += 4096) {
    double bs = 0, bq = 0;
    for (int64_t i = b; i < std::min(n, b + 4096); ++i) {
      bs += x[i];
      bq += static_cast<double>(x[i]) * x[i];
    }
    sum += bs;
    sq += bq;
  }
  s.mean = sum / static_cast<double>(n);
  s.std = std::sqrt(std::max(0.0, sq / static_cast<double>(n) - s.mean * s.mean));
  return s;
}

namespace {

// One down row (n = width columns) from its gathered dense values, by the spec's rule.
uint64_t mix_down_row(float* y, const float* src, int64_t n, uint64_t idx0, const ExpertTensorSpec& s, float* tmp) {
  if (s.neuron_reinit != nullptr) {
    // Neuron mode: the columns of re-initialised neurons.
    normal_elements(tmp, static_cast<size_t>(n), s.key, idx0, s.mean, s.std);
    uint64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool hit = s.neuron_reinit[i] != 0;
      y[i] = hit ? tmp[i] : src[i];
      count += hit;
    }
    return count;
  }
  return reinit_elements(y, src, static_cast<size_t>(n), s.key, idx0, s.threshold, s.mean, s.std);
}

}  // namespace

uint64_t fill_expert_rows(float* out, const ExpertTensorSpec& s, const DenseFfn& d, int64_t r0, int64_t r1,
                          float* scratch) {
  MOEKIT_CHECK(0 <= r0 && r0 <= r1 && r1 <= s.rows(), "fill_expert_rows: rows [", r0, ", ", r1, ") outside ",
               s.rows());
  MOEKIT_CHECK(s.hidden == d.hidden, "fill_expert_rows: hidden size ", s.hidden, " != dense ", d.hidden);
  const int64_t cols = s.cols();
  uint64_t count = 0;
  float* tmp = scratch + s.width;  // second half of the scratch
  for (int64_t r = r0; r < r1; ++r) {
    float* y = out + (r - r0) * cols;
    const uint64_t idx0 = static_cast<uint64_t>(r) * static_cast<uint64_t>(cols);
    if (s.proj == Proj::kDown) {
      // Row h of down: column j is dense column src_index[j] (the neuron's output weights).
      const float* row = d.down.data() + r * d.width;
      for (int64_t j = 0; j < s.width; ++j) scratch[j] = row[s.src_index[j]];
      count += mix_down_row(y, scratch, cols, idx0, s, tmp);
    } else {
      // Row j of gate/up is the dense row of its neuron, whole.
      const std::vector<float>& w = s.proj == Proj::kGate ? d.gate : d.up;
      const float* src = w.data() + static_cast<int64_t>(s.src_index[r]) * d.hidden;
      if (s.neuron_reinit != nullptr) {
        if (s.neuron_reinit[r]) {
          normal_elements(y, static_cast<size_t>(cols), s.key, idx0, s.mean, s.std);
          count += static_cast<uint64_t>(cols);
        } else {
          std::memcpy(y, src, static_cast<size_t>(cols) * sizeof(float));
        }
      } else {
        count += reinit_elements(y, src, static_cast<size_t>(cols), s.key, idx0, s.threshold, s.mean, s.std);
      }
    }
  }
  if (s.scale != 1.f) {
    const int64_t n = (r1 - r0) * cols;
    for (int64_t i = 0; i < n; ++i) out[i] *= s.scale;
  }
  return count;
}

void fill_router_rows(float* out, const PhiloxKey& key, int64_t hidden, int64_t r0, int64_t r1, bool zero,
                      float std, int64_t group) {
  MOEKIT_CHECK(group >= 1 && r0 <= r1, "fill_router_rows: bad group ", group, " or rows [", r0, ", ", r1, ")");
  for (int64_t r = r0; r < r1; ++r) {
    float* y = out + (r - r0) * hidden;
    if (zero) {
      std::fill(y, y + hidden, 0.f);
    } else {
      const uint64_t base = static_cast<uint64_t>(r / group) * static_cast<uint64_t>(hidden);
      normal_elements(y, static_cast<size_t>(hidden), key, base, 0.f, std);
    }
  }
}

}  // namespace moekit::upcycle
