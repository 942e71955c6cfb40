#include "core/check.h"

#include <cstring>

namespace moekit::detail {

void throw_error(const char* file, int line, const char* cond, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  std::ostringstream os;
  os << msg;
  if (msg.empty() && cond) os << "check failed: " << cond;
  os << " [" << base << ":" << line << "]";
  throw Error(os.str());
}

}  // namespace moekit::detail
