// libFuzzer target: a Megatron indexed dataset, PREFIX.idx and PREFIX.bin. The input is the .idx
// bytes, the separator "\n--bin--\n", then the .bin bytes. TokenDataset::open validates both;
// an accepted dataset must read every document (a bounded number of tokens) within its lengths.
#include <cstdint>
#include <string>
#include <vector>

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
    int64_t total = 0, budget = 1 << 16;
    std::vector<int64_t> buf;
    for (int64_t d = 0; d < ds.num_documents(); ++d) {
      const int64_t n = ds.document_length(d);
      MOEKIT_FUZZ_EXPECT(n >= 0);
      total += n;
      const int64_t take = std::min(n, budget);
      budget -= take;
      buf.resize(static_cast<size_t>(take));
      if (take > 0) ds.read(d, n - take, take, buf.data());
    }
    MOEKIT_FUZZ_EXPECT(total == ds.num_tokens());
  } catch (const moekit::Error&) {
  }
  return 0;
}
