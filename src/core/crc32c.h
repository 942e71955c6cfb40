// CRC-32C (Castagnoli), the checksum of TFRecord framing (TensorBoard event files), of every
// dataset in a training checkpoint and of every file in its manifest. The SSE4.2 instruction
// where the CPU has it (chosen at run time), else a bytewise table: the manifest reads every byte
// of a checkpoint back, so this loop must keep up with the disk.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moekit {

// CRC-32C of n bytes; pass a previous result as `crc` to continue over a second buffer
// (crc32c(b, nb, crc32c(a, na)) == crc32c of a followed by b).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
// The table version, whatever the CPU (the reference the fast path is tested against).
uint32_t crc32c_bytewise(const void* data, size_t n, uint32_t crc = 0);

}  // namespace moekit
