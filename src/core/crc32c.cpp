// CRC-32C: the SSE4.2 crc32 instruction where the CPU has it (chosen at run time, so portable
// builds get it too), else a bytewise table. Both compute the same reflected Castagnoli CRC.
#include "core/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define MOEKIT_CRC32C_HW 1
#endif

namespace moekit {

namespace {

// Castagnoli polynomial 0x1EDC6F41, reflected.
const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

#ifdef MOEKIT_CRC32C_HW
// Eight bytes per instruction. One dependency chain: about 8 bytes per 3 cycles, against about
// one byte per several cycles for the table; the checkpoint manifest reads every byte back.
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; --n, ++p) c32 = _mm_crc32_u8(c32, *p);
  return ~c32;
}

bool have_sse42() {
  static const bool kHave = __builtin_cpu_supports("sse4.2");
  return kHave;
}
#endif

}  // namespace

uint32_t crc32c_bytewise(const void* data, size_t n, uint32_t crc) {
  const auto& t = crc_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
#ifdef MOEKIT_CRC32C_HW
  if (have_sse42()) return crc32c_sse42(static_cast<const uint8_t*>(data), n, crc);
#endif
  return crc32c_bytewise(data, n, crc);
}

}  // namespace moekit
