// Test-only fault injection (see fault.h).
#include "core/fault.h"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace moekit {

namespace {

struct FaultSpec {
  std::string point;
  int64_t hit = 1;  // fire on the hit-th time the point is reached
  bool enospc = false;
};

// "<point>[@<hit>][:enospc]"
const FaultSpec& spec() {
  static const FaultSpec kSpec = [] {
    FaultSpec s;
    const char* v = std::getenv("MOEKIT_DEBUG_FAULT");
    if (!v || !*v) return s;
    s.point = v;
    const size_t colon = s.point.find(':');
    if (colon != std::string::npos) {
      s.enospc = s.point.compare(colon + 1, std::string::npos, "enospc") == 0;
      s.point.resize(colon);
    }
    const size_t at = s.point.find('@');
    if (at != std::string::npos) {
      s.hit = std::max<int64_t>(1, std::atoll(s.point.c_str() + at + 1));
      s.point.resize(at);
    }
    return s;
  }();
  return kSpec;
}

std::atomic<int64_t> g_hits{0};

}  // namespace

bool fault_point(const char* point) {
  const FaultSpec& s = spec();
  if (s.point.empty() || s.point != point) return false;
  const int64_t hit = ++g_hits;
  if (s.enospc) return hit >= s.hit;  // from the hit-th time on: a disk stays full
  if (hit == s.hit) std::raise(SIGKILL);
  return false;
}

}  // namespace moekit
