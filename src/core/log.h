// Rank-aware logging. log_info prints on rank 0 only (the progress line); log_warn and
// log_error print on every rank, prefixed with the rank when the world has more than one.
#pragma once

#include <string>

#include "core/check.h"

namespace moekit {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void log_set_rank(int rank, int world);
void log_set_level(LogLevel level);  // MOEKIT_LOG_LEVEL=debug|info|warn|error also sets it
int log_rank();
void log_write(LogLevel level, bool all_ranks, const std::string& msg);

template <typename... Args>
void log_info(Args&&... args) { log_write(LogLevel::kInfo, false, detail::concat(std::forward<Args>(args)...)); }
template <typename... Args>
void log_debug(Args&&... args) { log_write(LogLevel::kDebug, false, detail::concat(std::forward<Args>(args)...)); }
template <typename... Args>
void log_warn(Args&&... args) { log_write(LogLevel::kWarn, true, detail::concat(std::forward<Args>(args)...)); }
template <typename... Args>
void log_error(Args&&... args) { log_write(LogLevel::kError, true, detail::concat(std::forward<Args>(args)...)); }

}  // namespace moekit
