// CRC-32C throughput: the bytewise table against the SSE4.2 path that crc32c() takes on CPUs
// with it. The checkpoint manifest reads every byte of a checkpoint back through this function
// (once when each rank file is closed, once when a checkpoint is opened), so it must keep up
// with the disk. Prints a table (docs/PERF.md, "CRC-32C").
//   bench_crc32c [--mib 256] [--reps 5]
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "core/crc32c.h"

namespace {

// Best of `reps` runs, in GB/s (1e9 bytes per second).
template <typename F>
double gb_per_s(const std::vector<uint8_t>& buf, int reps, F crc, uint32_t* out) {
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    *out = crc(buf.data(), buf.size(), 0u);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(buf.size()) / s / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CRC-32C throughput: bytewise table vs the path crc32c() takes"};
  int mib = 256, reps = 5;
  app.add_option("--mib", mib, "buffer size in MiB")->capture_default_str();
  app.add_option("--reps", reps, "runs per variant (best taken)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::vector<uint8_t> buf(static_cast<size_t>(mib) << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  uint32_t a = 0, b = 0;
  const double table = gb_per_s(buf, reps, moekit::crc32c_bytewise, &a);
  const double fast = gb_per_s(buf, reps, moekit::crc32c, &b);
  std::printf("| variant | GB/s | crc |\n|---|---|---|\n");
  std::printf("| bytewise table | %.2f | %08x |\n", table, a);
  std::printf("| crc32c() | %.2f | %08x |\n", fast, b);
  std::printf("speed-up %.1fx over %d MiB, best of %d\n", fast / table, mib, reps);
  return a == b ? 0 : 1;
}
