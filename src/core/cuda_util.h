// CUDA plumbing for the GPU backend (CUDA builds only): checked calls, the debug option that
// synchronises after every launch, device buffers, and the per-rank execution context (device,
// compute stream, cuBLAS handle and workspace).
//
// Every CUDA runtime and cuBLAS call goes through MOEKIT_CUDA_CHECK / MOEKIT_CUBLAS_CHECK, and
// every kernel launch is followed by MOEKIT_CUDA_LAUNCHED(name, stream): it checks the launch
// and, when MOEKIT_CUDA_SYNC=1 is set in the environment, synchronises the stream so that an
// asynchronous fault is reported at the kernel that caused it (slow; for debugging).
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/check.h"

namespace moekit::cuda {

using bf16 = __nv_bfloat16;

[[noreturn]] void fail(const char* file, int line, const char* call, const char* what);
const char* cublas_status_name(cublasStatus_t s);
// True when MOEKIT_CUDA_SYNC=1 (read once).
bool sync_after_launch();
void check_launch(const char* name, cudaStream_t stream, const char* file, int line);

}  // namespace moekit::cuda

#define MOEKIT_CUDA_CHECK(call)                                                         \
  do {                                                                                  \
    const cudaError_t moekit_e_ = (call);                                               \
    if (moekit_e_ != cudaSuccess)                                                       \
      ::moekit::cuda::fail(__FILE__, __LINE__, #call, cudaGetErrorString(moekit_e_));   \
  } while (0)

#define MOEKIT_CUBLAS_CHECK(call)                                                             \
  do {                                                                                        \
    const cublasStatus_t moekit_s_ = (call);                                                  \
    if (moekit_s_ != CUBLAS_STATUS_SUCCESS)                                                   \
      ::moekit::cuda::fail(__FILE__, __LINE__, #call, ::moekit::cuda::cublas_status_name(moekit_s_)); \
  } while (0)

#define MOEKIT_CUDA_LAUNCHED(name, stream) ::moekit::cuda::check_launch(name, stream, __FILE__, __LINE__)

namespace moekit::cuda {

// Bytes held by all live DeviceBuffers of this process, and the most ever held at once since the
// last reset: what moekit itself allocated (the CUDA context, cuBLAS' and NCCL's internals are
// not counted), the figure `moekit cost`'s GPU memory plan predicts.
int64_t allocated_bytes();
int64_t peak_allocated_bytes();
void reset_peak_allocated_bytes();
// Adds `delta` bytes to the count (cudaMalloc / cudaFree done outside DeviceBuffer).
void track_allocated_bytes(int64_t delta);

// Owning device allocation (cudaMalloc), movable. Zero bytes is a valid, null buffer.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  // Grow (never shrink) to at least `bytes`; contents are not kept.
  void reserve(size_t bytes);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A typed device array: DeviceBuffer plus an element count, with blocking host copies (tests,
// set-up and checkpoints; the training step itself never copies synchronously).
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) : buf_(n * sizeof(T)), n_(n) {}
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host.data(), host.size()); }

  T* data() const { return static_cast<T*>(buf_.data()); }
  size_t size() const { return n_; }
  void resize(size_t n) {  // contents are not kept
    buf_.reserve(n * sizeof(T));
    n_ = n;
  }
  void upload(const T* src, size_t n) {
    MOEKIT_CHECK(n <= n_, "DeviceArray::upload: ", n, " elements into an array of ", n_);
    MOEKIT_CUDA_CHECK(cudaMemcpy(data(), src, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    MOEKIT_CUDA_CHECK(cudaMemcpy(h.data(), data(), n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  // Fill every byte with `byte` (tests poison outputs with 0xff: NaN in f32 and bf16).
  void fill_bytes(int byte) { MOEKIT_CUDA_CHECK(cudaMemset(data(), byte, n_ * sizeof(T))); }

 private:
  DeviceBuffer buf_;
  size_t n_ = 0;
};

// What every GPU op of one rank runs on: the device (chosen from the local rank), one compute
// stream and a cuBLAS handle bound to it with its own workspace (so cuBLAS never allocates
// during a step and results do not depend on the stream's workspace pool).
class Context {
 public:
  // device < 0: the current device.
  explicit Context(int device = -1);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  void synchronize() const;
  // A device scratch area of at least `bytes`, shared by the ops of this context: valid until the
  // next call (ops run in stream order, so one op's scratch is free when the next one starts;
  // growing it frees the old block, which cudaFree does only after pending work).
  void* scratch(size_t bytes) const {
    scratch_.reserve(bytes);
    return scratch_.data();
  }

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer workspace_;
  mutable DeviceBuffer scratch_;
};

// The device a rank uses: local_rank modulo the visible devices, so one rank per GPU on each node
// whatever CUDA_VISIBLE_DEVICES leaves visible. Fails when no device is visible.
int device_for_local_rank(int local_rank);

// Blocks and threads for a grid-stride loop over n elements.
inline unsigned grid_for(int64_t n, int threads = 256) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

}  // namespace moekit::cuda
#endif  // MOEKIT_WITH_CUDA
