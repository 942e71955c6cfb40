// libFuzzer target: a training checkpoint step directory as moekit resumes it. The input is the
// directory's files in a fixed order, separated by "\n--file--\n": meta.json,
// config.resolved.yaml, manifest.json, rank_00000.h5 (fewer parts: files missing). The reader
// checks the manifest (sizes, CRC-32C) before HDF5 parses a byte, then meta.json, the rank file's
// stamps and structure; an accepted checkpoint must read every tensor, finite, with its checksum.
#include <cstdint>
#include <filesystem>
#include <string>

#include "checkpoint/train_checkpoint.h"
#include "core/check.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  static const char* const kNames[] = {"meta.json", "config.resolved.yaml", "manifest.json", "rank_00000.h5"};
  const auto parts = moekit::fuzz::split(std::string(reinterpret_cast<const char*>(data), size), "\n--file--\n", 4);
  const std::string dir = moekit::fuzz::scratch_dir() + "/step_00000004";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  for (size_t i = 0; i < parts.size(); ++i) moekit::fuzz::write_file(dir + "/" + kNames[i], parts[i]);
  try {
    const moekit::checkpoint::TrainCheckpointReader r(dir);
    r.verify_all(/*require_finite=*/true);
    MOEKIT_FUZZ_EXPECT(r.step() == 4);
    moekit::fuzz::read_all_tensors(r);
  } catch (const moekit::Error&) {
  }
  return 0;
}
