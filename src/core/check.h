// Errors and CHECK macros. Every failure a user can cause throws moekit::Error with the
// source location and a message that names the file, field or value at fault; main()
// catches it, prints it and exits non-zero.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moekit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

[[noreturn]] void throw_error(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace detail
}  // namespace moekit

// MOEKIT_CHECK(cond, parts...): throw moekit::Error("parts... [file:line]") when cond is false.
// A message is required: it must name the file, field or value at fault.
#define MOEKIT_CHECK(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::moekit::detail::throw_error(__FILE__, __LINE__, #cond,                             \
                                    ::moekit::detail::concat(__VA_ARGS__));                \
  } while (0)

// MOEKIT_FAIL(parts...): unconditional error with location.
#define MOEKIT_FAIL(...) \
  ::moekit::detail::throw_error(__FILE__, __LINE__, nullptr, ::moekit::detail::concat(__VA_ARGS__))
