// make_cuda_step in a build without CUDA: `train.device: cuda` is a clear error.
#ifndef MOEKIT_WITH_CUDA
#include "core/check.h"
#include "train/device_step.h"

namespace moekit::train {

std::unique_ptr<DeviceStep> make_cuda_step(const config::ModelConfig&, const model::ParamStore&,
                                           const optim::OptimConfig&, parallel::ParallelContext&) {
  MOEKIT_FAIL("train.device is 'cuda' but this moekit was built without CUDA (MOEKIT_CUDA=OFF); rebuild with the "
              "CUDA toolkit installed or use train.device: cpu");
}

}  // namespace moekit::train
#endif
