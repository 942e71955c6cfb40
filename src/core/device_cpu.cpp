#ifndef MOEKIT_WITH_CUDA
#include "core/device.h"

namespace moekit {

bool built_with_cuda() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_name(int) { return ""; }

}  // namespace moekit
#endif
