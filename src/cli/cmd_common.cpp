#include <cstdlib>

#include "cli/commands.h"
#include "core/check.h"

namespace moekit::cli {

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(pos, end - pos);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    MOEKIT_CHECK(!item.empty(), what, ": empty item at character ", pos, " of '", text, "'");
    char* stop = nullptr;
    errno = 0;
    long long v = std::strtoll(item.c_str(), &stop, 10);
    MOEKIT_CHECK(stop && *stop == '\0' && errno == 0, what, ": '", item, "' is not an integer");
    out.push_back(v);
    pos = end + 1;
  }
  return out;
}

}  // namespace moekit::cli
