// libFuzzer target: a safetensors file image (8-byte little-endian header length, header JSON,
// data) through SafetensorsFile::parse, the validation open() runs. An accepted header must
// describe tensors that tile the data section exactly, in order, each as large as its shape.
#include <cstdint>
#include <cstring>
#include <string>

#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using moekit::checkpoint::SafetensorsFile;
  uint64_t header_len = 0;
  if (size >= 8) std::memcpy(&header_len, data, 8);
  const size_t avail = size >= 8 ? size - 8 : 0;
  const std::string header(reinterpret_cast<const char*>(data) + (size >= 8 ? 8 : 0),
                           static_cast<size_t>(std::min<uint64_t>(header_len, avail)));
  try {
    const SafetensorsFile f = SafetensorsFile::parse("fuzz.safetensors", header, header_len, size);
    const uint64_t data_bytes = size - f.data_start();
    uint64_t at = 0;
    for (const auto& t : f.tensors()) {
      MOEKIT_FUZZ_EXPECT(t.begin == at && t.end >= t.begin && t.end <= data_bytes);
      if (t.dtype_supported())
        MOEKIT_FUZZ_EXPECT(static_cast<uint64_t>(moekit::shape_numel(t.shape)) * moekit::dtype_size(t.dtype) ==
                           t.end - t.begin);
      MOEKIT_FUZZ_EXPECT(f.find(t.name) == &t);
      at = t.end;
    }
    MOEKIT_FUZZ_EXPECT(at == data_bytes);
  } catch (const moekit::Error&) {
  }
  return 0;
}
