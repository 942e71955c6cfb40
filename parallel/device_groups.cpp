#include "parallel/device_groups.h"

#include "core/check.h"
#ifdef MOEKIT_WITH_CUDA
#include "parallel/nccl_communicator.h"
#endif

namespace moekit::parallel {

namespace {

// A group of one on a device backend: reductions are the identity, exchanges copy through the
// backend (LocalCommunicator's memmove would dereference device pointers on the host).
class BackendLocalCommunicator final : public Communicator {
 public:
  BackendLocalCommunicator(backend::Backend& be, std::string name, int world_rank)
      : Communicator(std::move(name)), be_(be), world_rank_(world_rank) {
    members_ = {world_rank};
  }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int world_rank() const override { return world_rank_; }
  [[noreturn]] void abort(int code, const std::string& message) override { abort_job(code, message); }

 protected:
  void do_all_reduce(void*, int64_t count, DataType type, ReduceOp) override {
    stats_.all_reduce_bytes += count * static_cast<int64_t>(data_type_size(type));
    ++stats_.calls;
  }
  void do_reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp) override {
    stats_.reduce_scatter_bytes += copy(out, in, count, type);
  }
  void do_all_gather(void* out, const void* in, int64_t count, DataType type) override {
    stats_.all_gather_bytes += copy(out, in, count, type);
  }
  void do_reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type, ReduceOp op) override {
    do_reduce_scatter(out, in, counts[0], type, op);
  }
  void do_all_gather_v(void* out, const void* in, const int64_t* counts, DataType type) override {
    do_all_gather(out, in, counts[0], type);
  }
  void do_all_to_all(void* out, const void* in, int64_t count, DataType type) override { copy(out, in, count, type); }
  void do_all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs, const void* send,
                       const int64_t* send_counts, const int64_t* send_displs, int64_t unit, DataType type) override {
    check_all_to_all_v(*this, recv_counts, recv_displs, send_counts, send_displs);
    MOEKIT_CHECK(send_counts[0] == recv_counts[0], "all_to_all_v on group '", name(), "': a single rank sends ",
                 send_counts[0], " units to itself but expects ", recv_counts[0]);
    const int64_t ub = unit * static_cast<int64_t>(data_type_size(type));
    be_.copy(static_cast<char*>(recv) + recv_displs[0] * ub, static_cast<const char*>(send) + send_displs[0] * ub,
             static_cast<size_t>(send_counts[0] * ub));
    ++stats_.calls;
  }
  void do_broadcast(void*, int64_t count, DataType type, int root) override {
    MOEKIT_CHECK(root == 0, "broadcast on group '", name(), "': root ", root, " is outside a group of one");
    stats_.broadcast_bytes += count * static_cast<int64_t>(data_type_size(type));
    ++stats_.calls;
  }
  void do_barrier() override {}
  std::unique_ptr<Communicator> do_split(int, int, const std::string& name) override {
    return std::make_unique<BackendLocalCommunicator>(be_, name, world_rank_);
  }

 private:
  int64_t copy(void* out, const void* in, int64_t count, DataType type) {
    const int64_t bytes = count * static_cast<int64_t>(data_type_size(type));
    ++stats_.calls;
    be_.copy(out, in, static_cast<size_t>(bytes));
    return bytes;
  }
  backend::Backend& be_;
  int world_rank_;
};

}  // namespace

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
      own_[i] = std::make_unique<BackendLocalCommunicator>(be, names[i], host[i]->world_rank());
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
