// First non-finite (NaN or infinity) element of an f32 array. Shared by the checkpoint reader
// (values loaded from disk) and the optimizer checks (values after each update).
#pragma once

#include <cstdint>
#include <cstring>

namespace moekit {

// Index of the first NaN or infinity in x[0, n), or -1. A float is not finite exactly when its
// exponent bits are all ones; the integer OR-reduction below vectorises (a float compare chain
// would not), so the common all-finite case is one pass at memory speed.
inline int64_t first_non_finite(const float* x, int64_t n) {
  uint32_t any = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    any |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
  }
  if (!any) return -1;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return i;
  }
  return -1;
}

}  // namespace moekit
