// Test-only fault injection (see fault.h).
#include "core/fault.h"

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>

namespace moekit {

namespace {

struct FaultSpec {
  std::string point;
  bool enospc = false;
};

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
    return s;
  }();
  return kSpec;
}

}  // namespace

bool fault_point(const char* point) {
  const FaultSpec& s = spec();
  if (s.point.empty() || s.point != point) return false;
  if (s.enospc) return true;
  std::raise(SIGKILL);
  return false;
}

}  // namespace moekit
