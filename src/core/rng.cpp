#include "core/rng.h"

#include <cmath>

namespace moekit {

namespace {
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}
}  // namespace

Philox4 philox4x32(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kPhiloxM0, c[0], &hi0, &lo0);
    mulhilo(kPhiloxM1, c[2], &hi1, &lo1);
    c = {hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0};
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c;
}

uint64_t name_hash(std::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : name) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

CounterRng::CounterRng(uint64_t seed, std::string_view name) {
  // Mix the seed into the name hash so (seed, name) pairs do not collide trivially.
  uint64_t h = name_hash(name) ^ (seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
  k0_ = static_cast<uint32_t>(h);
  k1_ = static_cast<uint32_t>(h >> 32);
}

Philox4 CounterRng::bits(uint64_t index) const {
  return philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u}, k0_, k1_);
}

static inline float u32_to_open01(uint32_t x) {
  return (static_cast<float>(x >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

float CounterRng::uniform(uint64_t index) const { return u32_to_open01(bits(index)[0]); }

float CounterRng::normal(uint64_t index) const {
  Philox4 b = bits(index);
  double u1 = (static_cast<double>(b[0]) + 0.5) * (1.0 / 4294967296.0);
  double u2 = (static_cast<double>(b[1]) + 0.5) * (1.0 / 4294967296.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

void CounterRng::fill_normal(float* out, size_t n, float mean, float std, uint64_t offset) const {
  for (size_t i = 0; i < n; ++i) out[i] = mean + std * normal(offset + i);
}

void CounterRng::fill_uniform(float* out, size_t n, float lo, float hi, uint64_t offset) const {
  for (size_t i = 0; i < n; ++i) out[i] = lo + (hi - lo) * uniform(offset + i);
}

}  // namespace moekit
