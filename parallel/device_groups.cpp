#include "parallel/device_groups.h"

#include "core/check.h"
#ifdef MOEKIT_WITH_CUDA
#include "parallel/nccl_communicator.h"
#endif

namespace moekit::parallel {

DeviceGroups::DeviceGroups(ParallelContext& ctx, backend::Backend& be) {
  Communicator* host[3] = {ctx.world.get(), ctx.ep.get(), ctx.edp.get()};
  Communicator** mine[3] = {&world_, &ep_, &edp_};
  const char* names[3] = {"world (device)", "ep (device)", "edp (device)"};
  for (int i = 0; i < 3; ++i) {
    if (be.host_memory()) {
      *mine[i] = host[i];
      continue;
    }
    if (host[i]->size() == 1) {
      // A group of one: reductions are the identity, exchanges copy through the backend
      // (a host memmove would dereference device pointers).
      own_[i] = std::make_unique<LocalCommunicator>(
          names[i], [&be](void* dst, const void* src, size_t bytes) { be.copy(dst, src, bytes); },
          host[i]->world_rank());
    } else {
#ifdef MOEKIT_WITH_CUDA
      // Every rank creates the same groups in the same order (each creation is a collective);
      // each collective first waits for the backend's queued work.
      own_[i] = make_nccl_communicator(*host[i], names[i], [&be] { be.synchronize(); });
#else
      MOEKIT_FAIL("device groups: backend '", be.name(), "' needs NCCL, and this build has no CUDA");
#endif
    }
    *mine[i] = own_[i].get();
  }
}

DeviceGroups::~DeviceGroups() = default;

}  // namespace moekit::parallel
