// AdamW on the GPU: the per-element update of adamw_math.h (the CPU loop's formula, in the order
// torch.optim.AdamW uses) over one tensor's fp32 master, moments and gradient, writing the bf16
// copy the GEMMs read when mixed precision is on.
#pragma once

#ifdef MOEKIT_WITH_CUDA
#include <cstdint>

#include "core/cuda_util.h"
#include "optim/adamw_math.h"

namespace moekit::optim {

// p, m, v, g: n f32 elements; w_bf16 (may be null): receives round_to_bf16(p) after the update.
// With m == nullptr nothing is updated and only w_bf16 is written from p. *bad (device int64)
// is increased by the number of masters that are not finite afterwards.
void adamw_step_cuda(const cuda::Context& ctx, float* p, float* m, float* v, const float* g, cuda::bf16* w_bf16,
                     int64_t n, const AdamWScalars& s, unsigned long long* bad);

}  // namespace moekit::optim
#endif
