// Buffer (owning, aligned bytes on a device) and TensorView (non-owning typed view with a
// shape). Parameters, activations and checkpoint tensors all travel as these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace moekit {

enum class Device : uint8_t { kCPU, kCUDA };

using Shape = std::vector<int64_t>;

// Product of the dimensions; a negative dimension or a product past int64 is an error.
int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[2, 3]"

// Owning storage: 64-byte aligned host memory (device memory is owned by the CUDA backend).
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes, Device dev = Device::kCPU);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::kCPU;
};

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;
  Device device = Device::kCPU;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
};

// A host tensor that owns its storage: the unit the checkpoint readers hand out.
struct HostTensor {
  DType dtype = DType::kF32;
  Shape shape;
  Buffer storage;

  HostTensor() = default;
  HostTensor(DType t, Shape s);
  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return storage.bytes(); }
  TensorView view() { return {storage.data(), dtype, shape, Device::kCPU}; }
  template <typename T>
  T* as() { return static_cast<T*>(storage.data()); }
  template <typename T>
  const T* as() const { return static_cast<const T*>(storage.data()); }
  std::vector<float> to_f32() const;  // floating types only
};

}  // namespace moekit
