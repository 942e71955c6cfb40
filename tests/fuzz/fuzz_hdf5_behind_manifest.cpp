// libFuzzer target, an experiment outside the CI set (tests/fuzz/run.sh does not run it): what
// the training-checkpoint reader would face without its manifest. The input is a rank file's
// bytes; the harness adds the seed's meta.json and config and re-makes the manifest around them
// (as someone who crafts a checkpoint and fixes up its checksums would), so libhdf5 parses every
// mutation and moekit's structure checks (links, objects, attributes, storage) see what it
// builds from them. A crash inside libhdf5 here is the reason moekit checks the manifest first
// (docs/RELIABILITY.md).
#include <cstdint>
#include <filesystem>
#include <string>

#include "checkpoint/manifest.h"
#include "checkpoint/train_checkpoint.h"
#include "core/check.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const std::string dir = moekit::fuzz::scratch_dir() + "/step_00000004";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  moekit::fuzz::write_file(dir + "/meta.json", R"({"files": ["rank_00000.h5"], "step": 4})");
  moekit::fuzz::write_file(dir + "/config.resolved.yaml", "seed: 1\n");
  moekit::fuzz::write_file(dir + "/rank_00000.h5", std::string(reinterpret_cast<const char*>(data), size));
  try {
    moekit::checkpoint::reseal_step_dir(dir);
    const moekit::checkpoint::TrainCheckpointReader r(dir);
    r.verify_all(/*require_finite=*/true);
    moekit::fuzz::read_all_tensors(r);
  } catch (const moekit::Error&) {
  }
  return 0;
}
