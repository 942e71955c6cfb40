// libFuzzer target: an llm.c token shard (256 int32 header, then uint16 or uint32 tokens), opened
// as a dataset split at the variant's delimiter (first byte even) or as one document (odd).
// An accepted shard must read back every document within its lengths.
#include <cstdint>
#include <string>

#include "core/check.h"
#include "data/token_dataset.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string path = moekit::fuzz::scratch_dir() + "/shard.bin";
  moekit::fuzz::write_file(path, std::string(reinterpret_cast<const char*>(data) + 1, size - 1));
  moekit::data::DatasetOptions opts;
  opts.llmc_delimiter = data[0] % 2 ? moekit::data::DatasetOptions::kNoSplit : moekit::data::DatasetOptions::kAuto;
  try {
    const auto ds = moekit::data::TokenDataset::open(path, opts);
    moekit::fuzz::read_all_documents(ds, /*from_end=*/false);
  } catch (const moekit::Error&) {
  }
  return 0;
}
