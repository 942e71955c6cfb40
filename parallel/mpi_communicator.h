// MpiCommunicator: the Communicator over an MPI communicator, host memory. The CPU backend of
// moekit's data and expert parallelism, and the bootstrap channel of the NCCL backend (the
// ncclUniqueId travels over MPI).
//
// MPI must be initialised first (parallel/bootstrap.h does it when a launcher started us).
// The world communicator is not owned; groups made by split() are, and are freed on
// destruction. MPI's default error handler (MPI_ERRORS_ARE_FATAL) stays in place: a transport
// error inside a collective cannot be recovered from, so it aborts the job.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace moekit::parallel {

class MpiCommunicator final : public Communicator {
 public:
  // Wraps `comm`; frees it on destruction when `owned`.
  MpiCommunicator(MPI_Comm comm, std::string name, bool owned);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  // MPI_COMM_WORLD, named "world".
  static std::unique_ptr<MpiCommunicator> world();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int world_rank() const override { return world_rank_; }
  MPI_Comm comm() const { return comm_; }

  [[noreturn]] void abort(int code, const std::string& message) override;

 protected:
  void do_all_reduce(void* data, int64_t count, DataType type, ReduceOp op) override;
  void do_reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp op) override;
  void do_all_gather(void* out, const void* in, int64_t count, DataType type) override;
  void do_reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type, ReduceOp op) override;
  void do_all_gather_v(void* out, const void* in, const int64_t* counts, DataType type) override;
  void do_all_to_all(void* out, const void* in, int64_t count, DataType type) override;
  void do_all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs, const void* send,
                       const int64_t* send_counts, const int64_t* send_displs, int64_t unit, DataType type) override;
  void do_broadcast(void* data, int64_t count, DataType type, int root) override;
  void do_barrier() override;
  std::unique_ptr<Communicator> do_split(int color, int key, const std::string& name) override;

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1, world_rank_ = 0;
};

}  // namespace moekit::parallel
