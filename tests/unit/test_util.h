// Shared helpers for the unit tests: finite-difference gradient checks and comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/rng.h"

namespace moekit::test {

inline std::vector<float> randn(size_t n, uint64_t seed, const std::string& name, float std = 1.f, float mean = 0.f) {
  std::vector<float> v(n);
  CounterRng(seed, name).fill_normal(v.data(), n, mean, std);
  return v;
}

// Central finite differences of a scalar f at up to `max_checks` coordinates of x (spread over
// the whole array), compared with the analytic gradient g: |num - ana| <= tol * max(1, |num|).
// x is restored after each probe.
inline void expect_grad_matches(const std::function<double()>& f, float* x, const float* g, int64_t n,
                                const std::string& what, double eps = 1e-2, double tol = 2e-2, int max_checks = 48) {
  const int64_t step = std::max<int64_t>(1, n / max_checks);
  int checked = 0;
  for (int64_t i = 0; i < n; i += step) {
    const float saved = x[i];
    x[i] = saved + static_cast<float>(eps);
    const double fp = f();
    x[i] = saved - static_cast<float>(eps);
    const double fm = f();
    x[i] = saved;
    const double num = (fp - fm) / (2 * eps);
    EXPECT_NEAR(num, g[i], tol * std::max(1.0, std::fabs(num))) << what << " element " << i;
    ++checked;
  }
  EXPECT_GT(checked, 0) << what;
}

// max |a - b| / max(max |b|, floor): the relative error measure the parity tests use.
inline double rel_err(const float* a, const float* b, size_t n, double floor = 1e-6) {
  double diff = 0, mag = floor;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    mag = std::max(mag, std::fabs(static_cast<double>(b[i])));
  }
  return diff / mag;
}

// Runs f, expects moekit::Error, returns its message ("" and a test failure otherwise).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected moekit::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected moekit::Error, nothing was thrown";
  return "";
}

}  // namespace moekit::test

// MOEKIT_EXPECT_ERROR_HAS(statement, "part", ...): the statement throws moekit::Error whose
// message contains every part.
#define MOEKIT_EXPECT_ERROR_HAS(stmt, ...)                              \
  do {                                                                  \
    const std::string msg_ = ::moekit::test::error_of([&] { stmt; });   \
    for (const char* part_ : {__VA_ARGS__})                             \
      EXPECT_NE(msg_.find(part_), std::string::npos)                    \
          << "message lacks '" << part_ << "': " << msg_;               \
  } while (0)
