#include "core/tensor.h"

#include <cstdlib>
#include <sstream>

#include "core/check.h"
#include "core/checked.h"

namespace moekit {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s)
    MOEKIT_CHECK(d >= 0 && !__builtin_mul_overflow(n, d, &n), "shape ", shape_str(s),
                 d < 0 ? " has a negative dimension" : " has more elements than a 64-bit count holds");
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

Buffer::Buffer(size_t bytes, Device dev) : bytes_(bytes), device_(dev) {
  MOEKIT_CHECK(dev == Device::kCPU, "Buffer: device memory is allocated by the CUDA backend");
  if (bytes == 0) return;
  size_t rounded = (bytes + 63) / 64 * 64;
  data_ = std::aligned_alloc(64, rounded);
  MOEKIT_CHECK(data_ != nullptr, "out of host memory allocating ", bytes, " bytes");
}

Buffer::~Buffer() { std::free(data_); }

Buffer::Buffer(Buffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_), device_(o.device_) {
  o.data_ = nullptr;
  o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = o.data_;
    bytes_ = o.bytes_;
    device_ = o.device_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

HostTensor::HostTensor(DType t, Shape s)
    : dtype(t),
      shape(std::move(s)),
      storage(static_cast<size_t>(checked_mul(shape_numel(shape), static_cast<int64_t>(dtype_size(t)),
                                              "tensor of shape " + shape_str(shape)))) {}

std::vector<float> HostTensor::to_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  moekit::to_f32(out.data(), storage.data(), dtype, out.size());
  return out;
}

}  // namespace moekit
