// Host-only code compiled by nvcc in CUDA builds (parallel/*.cu is globbed only with CUDA on).
#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "core/check.h"
#include "parallel/watchdog.h"

namespace moekit::parallel {

namespace {

// A failed NCCL or CUDA call leaves peers inside a collective: abort the job, naming the call.
#define MOEKIT_NCCL(call)                                                                               \
  do {                                                                                                  \
    ncclResult_t r_ = (call);                                                                           \
    if (r_ != ncclSuccess)                                                                              \
      abort_job(1, ::moekit::detail::concat("NCCL: ", #call, " failed: ", ncclGetErrorString(r_)));    \
  } while (0)
#define MOEKIT_CUDA_OR_ABORT(call)                                                                      \
  do {                                                                                                  \
    cudaError_t e_ = (call);                                                                            \
    if (e_ != cudaSuccess)                                                                              \
      abort_job(1, ::moekit::detail::concat("CUDA: ", #call, " failed: ", cudaGetErrorString(e_)));     \
  } while (0)

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::kF32: return ncclFloat32;
    case DataType::kF64: return ncclFloat64;
    case DataType::kI32: return ncclInt32;
    case DataType::kI64: return ncclInt64;
    case DataType::kU8: return ncclUint8;
  }
  MOEKIT_FAIL("unknown communicator data type ", static_cast<int>(t));
}

ncclRedOp_t nccl_op(ReduceOp op, DataType t) {
  MOEKIT_CHECK(op != ReduceOp::kAvg || t == DataType::kF32 || t == DataType::kF64, "NCCL: average of integer type ",
               data_type_name(t));
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
  }
  MOEKIT_FAIL("unknown reduce op ", static_cast<int>(op));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, std::string name, int world_rank, std::function<void()> before)
      : Communicator(std::move(name)), comm_(comm), world_rank_(world_rank), before_(std::move(before)) {
    MOEKIT_NCCL(ncclCommUserRank(comm_, &rank_));
    MOEKIT_NCCL(ncclCommCount(comm_, &size_));
    MOEKIT_CUDA_OR_ABORT(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MOEKIT_CUDA_OR_ABORT(cudaMalloc(&scratch_, sizeof(float)));
    gather_members();
  }
  ~NcclCommunicator() override {
    cudaFree(scratch_);
    cudaStreamDestroy(stream_);
    if (!aborting_.load()) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int world_rank() const override { return world_rank_; }
  // Callable from the watchdog's thread while the main thread polls in wait(): ncclCommAbort
  // ends the kernels waiting for peers, then MPI_Abort ends the job.
  [[noreturn]] void abort(int code, const std::string& message) override {
    if (!aborting_.exchange(true)) ncclCommAbort(comm_);
    abort_job(code, message);
  }

 protected:
  void do_all_reduce(void* data, int64_t count, DataType type, ReduceOp op) override {
    ready();
    stats_.all_reduce_bytes += count * static_cast<int64_t>(data_type_size(type));
    ++stats_.calls;
    MOEKIT_NCCL(ncclAllReduce(data, data, count, nccl_type(type), nccl_op(op, type), comm_, stream_));
    wait();
  }
  void do_reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp op) override {
    ready();
    stats_.reduce_scatter_bytes += count * size_ * static_cast<int64_t>(data_type_size(type));
    ++stats_.calls;
    MOEKIT_NCCL(ncclReduceScatter(in, out, count, nccl_type(type), nccl_op(op, type), comm_, stream_));
    wait();
  }
  void do_all_gather(void* out, const void* in, int64_t count, DataType type) override {
    ready();
    stats_.all_gather_bytes += count * static_cast<int64_t>(data_type_size(type));
    ++stats_.calls;
    MOEKIT_NCCL(ncclAllGather(in, out, count, nccl_type(type), comm_, stream_));
    wait();
  }
  // NCCL's reduce-scatter and all-gather need equal blocks: the uneven forms are one grouped
  // reduce (resp. broadcast) per block, rooted at the block's owner.
  void do_reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type, ReduceOp op) override {
    ready();
    const int64_t es = static_cast<int64_t>(data_type_size(type));
    int64_t at = 0;
    ++stats_.calls;
    MOEKIT_NCCL(ncclGroupStart());
    for (int r = 0; r < size_; ++r) {
      stats_.reduce_scatter_bytes += counts[r] * es;
      if (counts[r] > 0)
        MOEKIT_NCCL(ncclReduce(static_cast<const char*>(in) + at * es, r == rank_ ? out : nullptr, counts[r],
                               nccl_type(type), nccl_op(op, type), r, comm_, stream_));
      at += counts[r];
    }
    MOEKIT_NCCL(ncclGroupEnd());
    wait();
  }
  void do_all_gather_v(void* out, const void* in, const int64_t* counts, DataType type) override {
    ready();
    const int64_t es = static_cast<int64_t>(data_type_size(type));
    int64_t at = 0;
    stats_.all_gather_bytes += counts[rank_] * es;
    ++stats_.calls;
    MOEKIT_NCCL(ncclGroupStart());
    for (int r = 0; r < size_; ++r) {
      if (counts[r] > 0)
        MOEKIT_NCCL(ncclBroadcast(r == rank_ ? in : nullptr, static_cast<char*>(out) + at * es, counts[r],
                                  nccl_type(type), r, comm_, stream_));
      at += counts[r];
    }
    MOEKIT_NCCL(ncclGroupEnd());
    wait();
  }
  void do_all_to_all(void* out, const void* in, int64_t count, DataType type) override {
    std::vector<int64_t> counts(size_, count), displs(size_);
    for (int p = 0; p < size_; ++p) displs[p] = p * count;
    do_all_to_all_v(out, counts.data(), displs.data(), in, counts.data(), displs.data(), 1, type);
  }
  // NCCL has no all-to-all-v: one grouped send/recv pair per peer (zero-row messages skipped,
  // which both sides agree on because the counts were exchanged before).
  void do_all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs, const void* send,
                    const int64_t* send_counts, const int64_t* send_displs, int64_t unit, DataType type) override {
    ready();
    check_all_to_all_v(*this, recv_counts, recv_displs, send_counts, send_displs);
    const int64_t ub = unit * static_cast<int64_t>(data_type_size(type));
    const ncclDataType_t t = nccl_type(type);
    ++stats_.calls;
    MOEKIT_NCCL(ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      if (send_counts[p] > 0) {
        if (p != rank_) stats_.all_to_all_bytes += send_counts[p] * ub;
        MOEKIT_NCCL(ncclSend(static_cast<const char*>(send) + send_displs[p] * ub, send_counts[p] * unit, t, p, comm_,
                             stream_));
      }
      if (recv_counts[p] > 0)
        MOEKIT_NCCL(ncclRecv(static_cast<char*>(recv) + recv_displs[p] * ub, recv_counts[p] * unit, t, p, comm_,
                             stream_));
    }
    MOEKIT_NCCL(ncclGroupEnd());
    wait();
  }
  void do_broadcast(void* data, int64_t count, DataType type, int root) override {
    ready();
    if (rank_ == root) stats_.broadcast_bytes += count * static_cast<int64_t>(data_type_size(type));
    ++stats_.calls;
    MOEKIT_NCCL(ncclBroadcast(data, data, count, nccl_type(type), root, comm_, stream_));
    wait();
  }
  void do_barrier() override {
    MOEKIT_NCCL(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_));
    wait();
  }
  std::unique_ptr<Communicator> do_split(int color, int key, const std::string& name) override {
    ncclComm_t sub;
    MOEKIT_NCCL(ncclCommSplit(comm_, color, key, &sub, nullptr));
    return std::make_unique<NcclCommunicator>(sub, name, world_rank_, before_);
  }

 private:
  // The producer of the buffers finishes its queued work first (make_nccl_communicator's hook).
  void ready() {
    if (before_) before_();
  }
  // Waits for the stream by polling, so that a peer that is gone cannot block this thread in
  // the driver: NCCL's asynchronous errors (a network failure, a peer's abort) and the
  // watchdog's deadline (parallel/watchdog.h) both end the job through abort().
  void wait() {
    for (unsigned spins = 0;; ++spins) {
      if (aborting_.load()) {
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // the other thread ends the process
      }
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady)
        abort(1, ::moekit::detail::concat("CUDA: waiting for NCCL on group '", name(), "' failed: ",
                                          cudaGetErrorString(q)));
      ncclResult_t async = ncclSuccess;
      MOEKIT_NCCL(ncclCommGetAsyncError(comm_, &async));
      if (async != ncclSuccess && async != ncclInProgress)
        abort(1, ::moekit::detail::concat("NCCL: asynchronous error on group '", name(), "' (rank ", rank_, " of ",
                                          size_, "): ", ncclGetErrorString(async)));
      if ((spins & 1023) == 1023 && watchdog().overdue()) watchdog().fire();
      if (spins > 4096) std::this_thread::sleep_for(std::chrono::microseconds(50));  // long waits: stop spinning
    }
  }
  // World rank of every member (an all-gather of each rank's world rank through the scratch).
  void gather_members() {
    int* dev = nullptr;
    MOEKIT_CUDA_OR_ABORT(cudaMalloc(&dev, sizeof(int) * (size_ + 1)));
    MOEKIT_CUDA_OR_ABORT(cudaMemcpyAsync(dev + size_, &world_rank_, sizeof(int), cudaMemcpyHostToDevice, stream_));
    MOEKIT_NCCL(ncclAllGather(dev + size_, dev, 1, ncclInt32, comm_, stream_));
    members_.resize(size_);
    MOEKIT_CUDA_OR_ABORT(cudaMemcpyAsync(members_.data(), dev, sizeof(int) * size_, cudaMemcpyDeviceToHost, stream_));
    wait();
    cudaFree(dev);
  }

  ncclComm_t comm_;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;
  int rank_ = 0, size_ = 1, world_rank_ = 0;
  std::atomic<bool> aborting_{false};
  std::function<void()> before_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, const std::string& name,
                                                     std::function<void()> before) {
  ncclUniqueId id;
  if (bootstrap.rank() == 0) MOEKIT_NCCL(ncclGetUniqueId(&id));
  bootstrap.broadcast(reinterpret_cast<uint8_t*>(&id), static_cast<int64_t>(sizeof(id)), 0);
  ncclComm_t comm;
  MOEKIT_NCCL(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  return std::make_unique<NcclCommunicator>(comm, name, bootstrap.world_rank(), std::move(before));
}

}  // namespace moekit::parallel
