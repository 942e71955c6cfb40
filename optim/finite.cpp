// Finite-value checks of the training state and the skipped-step bound (see finite.h).
#include "optim/finite.h"

#include <atomic>
#include <cstdio>
#include <limits>

#include "core/check.h"
#include "core/finite.h"

namespace moekit::optim {

namespace {

struct Array {
  const char* what;  // "weights", "master weights", "exp_avg", "exp_avg_sq"
  const std::string* name;
  const float* data;  // memory of the backend
  int64_t n;
};

[[noreturn]] void report(const Array& x, const float* host, const std::string& when) {
  const int64_t i = first_non_finite(host, x.n);
  MOEKIT_FAIL(when, ": ", x.what, " of tensor '", *x.name, "': non-finite value ", i < 0 ? 0.f : host[i],
              " at element ", i, " of ", x.n, "; the training state is broken, stopping (the last checkpoint is intact)");
}

// The first bad array in order (not in time) is reported, so the message does not depend on
// the thread count. Host memory is scanned on all threads; a device counts on the device and
// copies back only the array it reports.
void check_arrays(const std::vector<Array>& arrays, backend::Backend& be, const std::string& when) {
  const int64_t count = static_cast<int64_t>(arrays.size());
  if (!be.host_memory()) {
    for (const Array& x : arrays)
      if (be.count_nonfinite(x.data, x.n) > 0) report(x, backend::to_host(be, x.data, x.n).data(), when);
    return;
  }
  std::atomic<int64_t> first_bad{count};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t a = 0; a < count; ++a) {
    if (a > first_bad.load(std::memory_order_relaxed)) continue;
    if (first_non_finite(arrays[a].data, arrays[a].n) < 0) continue;
    int64_t cur = first_bad.load();
    while (a < cur && !first_bad.compare_exchange_weak(cur, a)) {
    }
  }
  const int64_t bad = first_bad.load();
  if (bad < count) report(arrays[bad], arrays[bad].data, when);
}

}  // namespace

void check_finite_weights(const std::vector<TensorRef>& tensors, const std::string& when, backend::Backend& be) {
  std::vector<Array> arrays;
  for (const TensorRef& t : tensors) arrays.push_back({"weights", &t.name, t.w, t.numel});
  check_arrays(arrays, be, when);
}

void check_finite_state(AdamW& opt, const std::string& when) {
  std::vector<Array> arrays;
  const auto& tensors = opt.tensors();
  const bool masters = opt.config().precision != Precision::kFp32;  // fp32: the weights are the masters
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (masters) arrays.push_back({"master weights", &tensors[i].name, opt.master(i), tensors[i].numel});
    arrays.push_back({"exp_avg", &tensors[i].name, opt.exp_avg(i), tensors[i].numel});
    arrays.push_back({"exp_avg_sq", &tensors[i].name, opt.exp_avg_sq(i), tensors[i].numel});
  }
  check_arrays(arrays, opt.backend(), when);
}

void check_skipped_fraction(const OptimConfig& c, int64_t skipped, int64_t steps) {
  if (steps <= 0) return;
  const double fraction = static_cast<double>(skipped) / static_cast<double>(steps);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g", fraction);
  MOEKIT_CHECK(fraction <= c.max_skipped_fraction, skipped, " of ", steps, " steps (", buf,
               ") were skipped for non-finite loss or gradients, more than optim.max_skipped_fraction ",
               c.max_skipped_fraction, ": the run did not train as configured");
}

}  // namespace moekit::optim
