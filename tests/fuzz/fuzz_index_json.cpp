// libFuzzer target: model.safetensors.index.json of a sharded checkpoint directory whose two
// shards are fixed (a.safetensors holds "x", b.safetensors holds "y"). SafetensorsDir::open
// checks both directions of the mapping; an accepted index must give some of those tensors (a
// shard it does not name is not part of the checkpoint), each readable with its own values.
#include <cstdint>
#include <string>

#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "fuzz_util.h"

namespace {

const std::string& checkpoint_dir() {
  static const std::string kDir = [] {
    const std::string d = moekit::fuzz::scratch_dir() + "/ckpt";
    std::filesystem::create_directories(d);
    const float x[2] = {1.f, 2.f}, y[3] = {3.f, 4.f, 5.f};
    moekit::checkpoint::write_safetensors(d + "/a.safetensors", {{"x", moekit::DType::kF32, {2}, x}});
    moekit::checkpoint::write_safetensors(d + "/b.safetensors", {{"y", moekit::DType::kF32, {3}, y}});
    return d;
  }();
  return kDir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = checkpoint_dir();
  moekit::fuzz::write_file(dir + "/model.safetensors.index.json", std::string(reinterpret_cast<const char*>(data), size));
  try {
    const auto d = moekit::checkpoint::SafetensorsDir::open(dir);
    const std::vector<std::string> names = d.names();
    MOEKIT_FUZZ_EXPECT(!names.empty() && names.size() <= 2);
    for (const std::string& n : names) {
      MOEKIT_FUZZ_EXPECT(n == "x" || n == "y");
      if (n == "x") MOEKIT_FUZZ_EXPECT(d.read_f32("x", {2})[1] == 2.f);
      else MOEKIT_FUZZ_EXPECT(d.read_f32("y", {3})[2] == 5.f);
    }
  } catch (const moekit::Error&) {
  }
  return 0;
}
