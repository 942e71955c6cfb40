#include "core/cuda_util.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace moekit::cuda {

void fail(const char* file, int line, const char* call, const char* what) {
  detail::throw_error(file, line, nullptr, detail::concat("CUDA: ", call, " failed: ", what));
}

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cuBLAS status";
}

bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("MOEKIT_CUDA_SYNC");
    return v && std::strcmp(v, "0") != 0 && *v != '\0';
  }();
  return on;
}

void check_launch(const char* name, cudaStream_t stream, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && sync_after_launch()) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) fail(file, line, name, cudaGetErrorString(e));
}

namespace {
std::atomic<int64_t> g_allocated{0}, g_peak{0};

void note_alloc(int64_t bytes) {
  const int64_t now = g_allocated.fetch_add(bytes) + bytes;
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}
}  // namespace

int64_t allocated_bytes() { return g_allocated.load(); }
void track_allocated_bytes(int64_t delta) {
  if (delta > 0) note_alloc(delta);
  else g_allocated.fetch_add(delta);
}
int64_t peak_allocated_bytes() { return g_peak.load(); }
void reset_peak_allocated_bytes() { g_peak.store(g_allocated.load()); }

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes_ > 0) {
    MOEKIT_CUDA_CHECK(cudaMalloc(&data_, bytes_));
    note_alloc(static_cast<int64_t>(bytes_));
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (data_) {
    cudaFree(data_);
    g_allocated.fetch_sub(static_cast<int64_t>(bytes_));
  }
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)),
                                                        bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (data_) {
      cudaFree(data_);
      g_allocated.fetch_sub(static_cast<int64_t>(bytes_));
    }
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reserve(size_t bytes) {
  if (bytes <= bytes_) return;
  *this = DeviceBuffer(bytes);
}

namespace {
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS' recommendation for Hopper
}

Context::Context(int device) {
  if (device < 0) MOEKIT_CUDA_CHECK(cudaGetDevice(&device));
  device_ = device;
  MOEKIT_CUDA_CHECK(cudaSetDevice(device_));
  // A blocking stream: work on it is ordered with the legacy default stream, so the blocking
  // host copies of DeviceArray (tests, set-up) see every kernel issued before them and kernels
  // see every copy issued before them. The backend's own copies are stream-ordered as well.
  MOEKIT_CUDA_CHECK(cudaStreamCreate(&stream_));
  MOEKIT_CUBLAS_CHECK(cublasCreate(&cublas_));
  MOEKIT_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  workspace_ = DeviceBuffer(kCublasWorkspaceBytes);
  MOEKIT_CUBLAS_CHECK(cublasSetWorkspace(cublas_, workspace_.data(), workspace_.bytes()));
  // f32 GEMMs stay IEEE f32 (the CPU-parity tests depend on it); bf16 GEMMs use tensor cores.
  MOEKIT_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
}

Context::~Context() {
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void Context::synchronize() const { MOEKIT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

int device_for_local_rank(int local_rank) {
  int n = 0;
  MOEKIT_CUDA_CHECK(cudaGetDeviceCount(&n));
  MOEKIT_CHECK(n > 0, "no CUDA device is visible (CUDA_VISIBLE_DEVICES='",
               std::getenv("CUDA_VISIBLE_DEVICES") ? std::getenv("CUDA_VISIBLE_DEVICES") : "", "')");
  return local_rank % n;
}

}  // namespace moekit::cuda
