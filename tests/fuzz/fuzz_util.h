// Shared by the libFuzzer targets: a scratch directory per process (on /dev/shm when there is
// one: the file-based targets write their input to disk once per run), file writing, input
// splitting, and invariant checks that abort (a finding, like a crash) when an accepted input
// breaks a rule the reader promises.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moekit::fuzz {

inline const std::string& scratch_dir() {
  static const std::string kDir = [] {
    namespace fs = std::filesystem;
    const fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    const fs::path d = base / ("moekit_fuzz_" + std::to_string(::getpid()));
    fs::create_directories(d);
    static struct Remover {
      fs::path p;
      ~Remover() {
        std::error_code ec;
        fs::remove_all(p, ec);
      }
    } remover{d};
    return d.string();
  }();
  return kDir;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The parts of `input` between occurrences of `sep` (at most `max_parts`; the last takes the rest).
inline std::vector<std::string> split(const std::string& input, const std::string& sep, size_t max_parts) {
  std::vector<std::string> parts;
  size_t at = 0;
  while (parts.size() + 1 < max_parts) {
    const size_t next = input.find(sep, at);
    if (next == std::string::npos) break;
    parts.push_back(input.substr(at, next - at));
    at = next + sep.size();
  }
  parts.push_back(input.substr(at));
  return parts;
}

// An accepted input broke a promised rule: report and abort, so libFuzzer records it.
#define MOEKIT_FUZZ_EXPECT(cond)                                                         \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

// Reads every document of an accepted dataset (at most 2^16 tokens in all, from each document's
// start or its end): lengths must be non-negative and add up to the dataset's token count.
template <typename Dataset>
void read_all_documents(const Dataset& ds, bool from_end) {
  int64_t total = 0, budget = int64_t{1} << 16;
  std::vector<int64_t> buf;
  for (int64_t d = 0; d < ds.num_documents(); ++d) {
    const int64_t n = ds.document_length(d);
    MOEKIT_FUZZ_EXPECT(n >= 0);
    total += n;
    const int64_t take = n < budget ? n : budget;
    budget -= take;
    buf.resize(static_cast<size_t>(take));
    if (take > 0) ds.read(d, from_end ? n - take : 0, take, buf.data());
  }
  MOEKIT_FUZZ_EXPECT(total == ds.num_tokens());
}

// Reads every tensor of every group of an opened checkpoint (sizes already bounded by the
// reader's storage check).
template <typename Reader>
void read_all_tensors(const Reader& r) {
  std::vector<float> buf;
  for (const std::string& g : r.groups())
    for (const std::string& n : r.names(g)) {
      buf.resize(static_cast<size_t>(moekit::shape_numel(r.shape(g, n))));
      r.read(g, n, buf.data());
    }
}

}  // namespace moekit::fuzz
