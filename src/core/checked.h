// Checked integer arithmetic for sizes computed from untrusted input (config fields, file
// headers, command-line options): a product or sum that does not fit int64_t, or a negative
// factor, is a moekit::Error naming what was being computed, never signed-overflow UB or a
// wrapped size that a loop or an allocation would then trust.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/check.h"

namespace moekit {

// a * b; error "<what>: ... overflows" when it does not fit or a factor is negative.
inline int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  MOEKIT_CHECK(a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, &r), what, ": size ", a, " x ", b,
               a < 0 || b < 0 ? " has a negative factor" : " overflows a 64-bit integer");
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  MOEKIT_CHECK(a >= 0 && b >= 0 && !__builtin_add_overflow(a, b, &r), what, ": size ", a, " + ", b,
               a < 0 || b < 0 ? " has a negative term" : " overflows a 64-bit integer");
  return r;
}

// The product of every factor, checked at each step.
inline int64_t checked_product(std::initializer_list<int64_t> factors, const std::string& what) {
  int64_t r = 1;
  for (int64_t f : factors) r = checked_mul(r, f, what);
  return r;
}

// A non-negative size whose + and * are checked: lets a formula with many products read as
// the formula. Errors say which operation overflowed; the caller adds what was being sized.
class CheckedSize {
 public:
  CheckedSize(int64_t v) : v_(v) {  // NOLINT: implicit, so plain integers mix in
    MOEKIT_CHECK(v >= 0, "size ", v, " is negative");
  }
  int64_t value() const { return v_; }
  friend CheckedSize operator*(CheckedSize a, CheckedSize b) { return checked_mul(a.v_, b.v_, "size"); }
  friend CheckedSize operator+(CheckedSize a, CheckedSize b) { return checked_add(a.v_, b.v_, "size"); }
  CheckedSize& operator+=(CheckedSize b) { return *this = *this + b; }

 private:
  int64_t v_;
};

}  // namespace moekit
