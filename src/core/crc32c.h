// CRC-32C (Castagnoli), the checksum of TFRecord framing (TensorBoard event files) and of every
// dataset in a training checkpoint. Bytewise table version: checkpoints are checksummed once per
// save and per load, where the disk, not this loop, is the bottleneck.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moekit {

// CRC-32C of n bytes; pass a previous result as `crc` to continue over a second buffer
// (crc32c(b, nb, crc32c(a, na)) == crc32c of a followed by b).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace moekit
