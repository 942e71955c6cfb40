// Device discovery. Always available: a CPU-only build reports zero CUDA devices, so callers
// (and GPU tests, which skip) need no #ifdefs.
#pragma once

#include <string>

namespace moekit {

bool built_with_cuda();
int cuda_device_count();          // 0 when built without CUDA or no device/driver is present
std::string cuda_device_name(int device);  // "" when unavailable

}  // namespace moekit
