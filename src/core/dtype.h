// Element types moekit stores and moves: f32, bf16, f16, i32, i64. Names follow safetensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moekit {

enum class DType : uint8_t { kF32, kBF16, kF16, kI32, kI64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);           // "F32", "BF16", ... (safetensors spelling)
bool dtype_from_name(const std::string& name, DType* out);  // false for unknown names
DType dtype_parse(const std::string& name);  // user spelling: f32/fp32/float32, bf16, f16/fp16 ...
bool dtype_is_float(DType t);

// Convert n floating elements of type `src_t` at `src` to f32 (bf16/f16 widen exactly).
void to_f32(float* dst, const void* src, DType src_t, size_t n);
// Convert n f32 values to `dst_t` (round-to-nearest-even for bf16/f16).
void from_f32(void* dst, DType dst_t, const float* src, size_t n);
// The same bytes as from_f32, written with non-temporal (streaming) stores where the CPU has
// AVX-512 and the type is bf16: for output buffers that are handed to the kernel (O_DIRECT
// writes) and not read back, whose lines would otherwise each cost a read for ownership.
void from_f32_streaming(void* dst, DType dst_t, const float* src, size_t n);

}  // namespace moekit
