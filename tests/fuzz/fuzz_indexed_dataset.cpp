// libFuzzer target: a Megatron indexed dataset, PREFIX.idx and PREFIX.bin. The input is the .idx
// bytes, the separator "\n--bin--\n", then the .bin bytes. TokenDataset::open validates both;
// an accepted dataset must read every document (a bounded number of tokens) within its lengths.
#include <cstdint>
#include <string>

#include "core/check.h"
#include "data/token_dataset.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = moekit::fuzz::split(std::string(reinterpret_cast<const char*>(data), size), "\n--bin--\n", 2);
  const std::string prefix = moekit::fuzz::scratch_dir() + "/ds";
  moekit::fuzz::write_file(prefix + ".idx", parts[0]);
  moekit::fuzz::write_file(prefix + ".bin", parts.size() > 1 ? parts[1] : std::string());
  try {
    const auto ds = moekit::data::TokenDataset::open(prefix);
    moekit::fuzz::read_all_documents(ds, /*from_end=*/true);
  } catch (const moekit::Error&) {
  }
  return 0;
}
