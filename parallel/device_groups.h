// The process groups that move data living in a backend's memory. Host-side agreement (loss
// sums, token counts, the count exchange of the dispatcher, skip decisions) always travels over
// the ParallelContext's MPI groups; parameter gradients, ZeRO-1 shards and token rows travel
// over these:
//   cpu backend    the ParallelContext's own groups (host memory is their memory);
//   cuda backend   an NCCL mirror of each group of more than one rank (MPI bootstraps it), rank
//                  for rank; a group of one copies through the backend.
// Every collective first waits for the backend's queued work (the NCCL communicators run on
// their own streams: make_nccl_communicator's hook), so callers hand over buffers the way they do on
// the CPU.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "parallel/bootstrap.h"

namespace moekit::parallel {

class DeviceGroups {
 public:
  // Collective over every rank of ctx.world (the NCCL groups are created in the same order on
  // every rank).
  DeviceGroups(ParallelContext& ctx, backend::Backend& be);
  ~DeviceGroups();
  DeviceGroups(const DeviceGroups&) = delete;
  DeviceGroups& operator=(const DeviceGroups&) = delete;

  Communicator& world() const { return *world_; }
  Communicator& ep() const { return *ep_; }
  Communicator& edp() const { return *edp_; }

 private:
  std::unique_ptr<Communicator> own_[3];
  Communicator *world_ = nullptr, *ep_ = nullptr, *edp_ = nullptr;
};

}  // namespace moekit::parallel
