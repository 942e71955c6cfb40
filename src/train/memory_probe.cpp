#include "train/memory_probe.h"

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/check.h"
#include "core/rng.h"
#include "kernels/matmul.h"
#include "model/model.h"

namespace moekit::train {

namespace {

// A "Name:   1234 kB" line of a /proc file (/proc/self/status, /proc/meminfo), in bytes.
int64_t proc_kb_field(const char* file, const char* field) {
  std::ifstream in(file);
  MOEKIT_CHECK(in.good(), "cannot read ", file, " (RSS measurement needs Linux)");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':')
      return std::stoll(line.substr(n + 1)) * 1024;
  MOEKIT_FAIL(file, " has no ", field, " line");
}

// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0); false where refused.
bool reset_peak_rss() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int64_t cpu_step_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

RssMeasurement measure_cpu_step(const config::ModelConfig& cfg, const LayoutSpec& layout, uint64_t seed) {
  MOEKIT_CHECK(layout.mode == MemoryMode::kCpu, "RSS measurement needs the cpu memory mode");
  MOEKIT_CHECK(layout.world() == 1, "RSS measurement runs one rank (ep 1, dp 1), got ep ", layout.ep, " x dp ",
               layout.dp);
  layout.validate(cfg);
  // Refuse a step that would push the machine into the OOM killer.
  const int64_t need = plan_memory(cfg, layout).total, avail = proc_kb_field("/proc/meminfo", "MemAvailable");
  MOEKIT_CHECK(need < avail / 10 * 8, "RSS measurement: the step needs about ", need / 1000000,
               " MB by the plan, more than 80% of the ", avail / 1000000, " MB this machine has available");
  RssMeasurement m;
  m.threads = cpu_step_threads();
  {  // Start the BLAS and OpenMP thread pools (their stacks and buffers are not the step's).
    const int64_t n = 256;
    std::vector<float> a(n * n, 0.5f), c(n * n);
    kernels::matmul_nt(c.data(), a.data(), a.data(), n, n, n);
  }
#ifdef __GLIBC__
  // Hand memory freed earlier in this process back to the kernel, so that reusing it counts
  // as growth (glibc keeps freed heap pages resident otherwise).
  malloc_trim(0);
#endif
  const bool reset = reset_peak_rss();
  m.baseline_bytes = proc_kb_field("/proc/self/status", "VmRSS");
  if (!reset) m.baseline_bytes = std::max(m.baseline_bytes, proc_kb_field("/proc/self/status", "VmHWM"));
  {
    model::Model model(cfg);
    model.params().init(seed, cfg.initializer_range);
    // The optimizer state the plan counts (AdamW moments; fp32 master unless fp32 compute).
    const int64_t n = model.params().numel();
    std::vector<float> exp_avg(n, 0.f), exp_avg_sq(n, 0.f), master(layout.compute == DType::kF32 ? 0 : n, 0.f);
    const int64_t T = layout.tokens();
    std::vector<int64_t> ids(T), targets(T);
    CounterRng rng(seed, "memory_probe");
    for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int64_t>(rng.bits(t)[0] % cfg.vocab_size);
    for (int64_t t = 0; t < T; ++t) targets[t] = (t + 1) % layout.seq_len == 0 ? -1 : ids[t + 1];
    model::LossConfig lc;
    model.forward(ids.data(), targets.data(), layout.micro_batch, layout.seq_len, lc, /*train=*/true);
    model.backward();
    m.peak_bytes = proc_kb_field("/proc/self/status", "VmHWM");
  }
  return m;
}

}  // namespace moekit::train
