#include "core/log.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace moekit {

namespace {
int g_rank = 0, g_world = 1;
LogLevel g_level = [] {
  const char* env = std::getenv("MOEKIT_LOG_LEVEL");
  if (!env) return LogLevel::kInfo;
  if (!std::strcmp(env, "debug")) return LogLevel::kDebug;
  if (!std::strcmp(env, "warn")) return LogLevel::kWarn;
  if (!std::strcmp(env, "error")) return LogLevel::kError;
  return LogLevel::kInfo;
}();
std::mutex g_mu;
}  // namespace

void log_set_rank(int rank, int world) { g_rank = rank; g_world = world; }
void log_set_level(LogLevel level) { g_level = level; }
int log_rank() { return g_rank; }

void log_write(LogLevel level, bool all_ranks, const std::string& msg) {
  if (level < g_level) return;
  if (!all_ranks && g_rank != 0) return;
  static const char* kTag[] = {"debug", "info", "warn", "error"};
  std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char ts[32];
  std::strftime(ts, sizeof ts, "%H:%M:%S", std::localtime(&now));
  std::lock_guard<std::mutex> lock(g_mu);
  FILE* out = level >= LogLevel::kWarn ? stderr : stdout;
  if (g_world > 1)
    std::fprintf(out, "[%s %s rank %d/%d] %s\n", ts, kTag[static_cast<int>(level)], g_rank, g_world, msg.c_str());
  else
    std::fprintf(out, "[%s %s] %s\n", ts, kTag[static_cast<int>(level)], msg.c_str());
  std::fflush(out);
}

}  // namespace moekit
