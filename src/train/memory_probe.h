// Measures what one CPU training step really holds, to check the kCpu memory plan against:
// peak resident set size (Linux VmHWM) above the process baseline while a Model is built, one
// micro-batch runs forward and backward, and the AdamW state the plan counts (moments, and the
// fp32 master copy when the precision is not fp32) is allocated and written.
#pragma once

#include <cstdint>

#include "config/model_config.h"
#include "train/memory_plan.h"

namespace moekit::train {

struct RssMeasurement {
  int64_t baseline_bytes = 0;  // VmRSS before the model exists (threads and BLAS warmed up)
  int64_t peak_bytes = 0;      // VmHWM after the step (reset at the baseline where the kernel allows)
  int64_t threads = 1;         // OpenMP threads of the step (the plan's cpu_threads)
  int64_t step_bytes() const { return peak_bytes - baseline_bytes; }
};

// One step of `cfg` on random tokens under `layout` (kCpu; one rank: ep = dp = 1). Errors where
// /proc/self/status cannot be read.
RssMeasurement measure_cpu_step(const config::ModelConfig& cfg, const LayoutSpec& layout, uint64_t seed = 1);

// Threads a CPU step would run on (omp_get_max_threads, 1 without OpenMP).
int64_t cpu_step_threads();

}  // namespace moekit::train
