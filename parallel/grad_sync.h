// Gradient synchronisation and the global gradient norm under data + expert parallelism.
//
// Every rank's loss is the mean over its own slice of the global batch, and the objective is
// the mean of those losses over the W ranks (equal slices make it the global-batch mean). So
//  - a dense parameter (replicated on all W ranks) needs the average of the W local gradients:
//    all-reduce(avg) over the world;
//  - an expert parameter lives on the `edp` ranks of one expert-data-parallel group. Each of
//    them already summed, through the token all-to-all, the gradients flowing from the `ep`
//    ranks of its own ep group; summing over the edp group covers all W ranks, and the
//    objective's 1/W finishes it: all-reduce(sum) over edp, then scale by 1/W (NOT by 1/edp,
//    which would over-weight expert gradients by ep).
//
// The global norm must count every parameter once: dense gradients are identical on every rank
// after the sync (counted locally), expert gradients are identical within an edp group and
// distinct across the ep group (summed over ep). parallel/ sees raw arenas (pointer, count) so
// that it does not depend on the model.
//
// The arenas are memory of a backend; the collectives on them go over DeviceGroups (the MPI
// groups on CPUs, NCCL on GPUs); the norm's partial sums come to the host and are combined over
// the context's host groups.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "parallel/bootstrap.h"
#include "parallel/device_groups.h"

namespace moekit::parallel {

struct GradArenas {
  float* dense = nullptr;   // replicated on every rank
  int64_t dense_n = 0;
  float* expert = nullptr;  // this rank's experts
  int64_t expert_n = 0;
};

// Dense: average over the world. Expert: sum over edp, times 1/W. No-op on one rank.
void sync_gradients(backend::Backend& be, const GradArenas& g, const ParallelContext& ctx, const DeviceGroups& groups);

// After sync_gradients: sqrt(|dense|^2 + sum over the ep group of |local experts|^2), in
// double, identical on every rank. NaN/Inf propagate (the caller's NaN policy decides).
double global_grad_norm(backend::Backend& be, const GradArenas& g, const ParallelContext& ctx);

}  // namespace moekit::parallel
