// Communicator: the collectives moekit needs, behind one interface with three backends:
//   LocalCommunicator   one process (size 1): every collective is a copy. The default, so the
//                       single-process path and the unit tests need no MPI at all.
//   MpiCommunicator     parallel/mpi_communicator.h: MPI over a (sub-)communicator, host memory.
//   NcclCommunicator    parallel/nccl_communicator.h (CUDA builds): NCCL, device memory.
// Model and MoE code receive Communicator pointers (never a global), so the same code runs
// with any backend and any group.
//
// Contract for every backend:
//  - Collectives are blocking: when a call returns, the output is complete and the input may be
//    reused. Every rank of the group makes the same calls in the same order.
//  - Pointers are host memory for Local/MPI and device memory for NCCL.
//  - Counts are in elements of `type`; all_to_all_v counts and displacements are in units of
//    `unit` elements (rows of a (rows, hidden) buffer), which keeps MPI's int counts small.
//  - Errors in the transport abort the job (a half-finished collective cannot be recovered
//    from: the other ranks are inside it). abort() is also how a rank that throws takes the
//    job down instead of leaving the others waiting forever.
//  - stats() counts the bytes this rank handed to each kind of collective, so the benchmark
//    can compare them with the analytic per-step traffic.
//  - A collective that does not finish in time ends the job (parallel/watchdog.h): the public
//    functions time the backend's do_* calls, so a backend implements only the do_* functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moekit::parallel {

enum class DataType { kF32, kF64, kI32, kI64, kU8 };
enum class ReduceOp { kSum, kAvg, kMax };

size_t data_type_size(DataType t);
const char* data_type_name(DataType t);

template <typename T> constexpr DataType data_type_of();
template <> constexpr DataType data_type_of<float>() { return DataType::kF32; }
template <> constexpr DataType data_type_of<double>() { return DataType::kF64; }
template <> constexpr DataType data_type_of<int32_t>() { return DataType::kI32; }
template <> constexpr DataType data_type_of<int64_t>() { return DataType::kI64; }
template <> constexpr DataType data_type_of<uint8_t>() { return DataType::kU8; }

// Bytes this rank passed to each collective since construction (payload, not wire traffic:
// an all-reduce of n bytes counts n whatever algorithm the backend uses; all_to_all_v counts
// only the bytes addressed to other ranks, as those are the ones that cross the network).
struct CommStats {
  int64_t all_reduce_bytes = 0;
  int64_t reduce_scatter_bytes = 0;  // bytes of the input (size() * count elements)
  int64_t all_gather_bytes = 0;      // bytes of this rank's contribution
  int64_t all_to_all_bytes = 0;      // bytes sent to other ranks
  int64_t broadcast_bytes = 0;
  int64_t calls = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank in the job (MPI_COMM_WORLD), for messages that must name a process.
  virtual int world_rank() const = 0;
  // "world", "ep", "edp": names this group in errors.
  const std::string& name() const { return name_; }

  // Collectives. Each is timed by the watchdog (parallel/watchdog.h) around the backend's do_*.
  // data (count) <- op over the group, in place. kAvg is for floating types only.
  void all_reduce(void* data, int64_t count, DataType type, ReduceOp op);
  // out (count) <- op over the group of in[rank * count, (rank + 1) * count); in holds
  // size() * count elements.
  void reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp op);
  // out (size() * count) <- in (count) of every rank, in rank order.
  void all_gather(void* out, const void* in, int64_t count, DataType type);
  // Uneven forms over consecutive blocks (block r = counts[r] elements, after blocks 0..r-1),
  // as ZeRO-1 needs for row-aligned shards. counts has size() entries, the same on every rank.
  // out (counts[rank]) <- op over the group of block `rank` of in (sum(counts) elements).
  void reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type, ReduceOp op);
  // out (sum(counts)) <- block r from rank r's in (counts[r] elements).
  void all_gather_v(void* out, const void* in, const int64_t* counts, DataType type);
  // out (size() * count) <- block r of every rank's in (size() * count) goes to rank r.
  void all_to_all(void* out, const void* in, int64_t count, DataType type);
  // This rank sends units [send_displs[r], send_displs[r] + send_counts[r]) of
  // `send` to rank r and receives recv_counts[r] units from rank r at recv_displs[r].
  // A unit is `unit` consecutive elements. Arrays have size() entries.
  void all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs, const void* send,
                    const int64_t* send_counts, const int64_t* send_displs, int64_t unit, DataType type);
  void broadcast(void* data, int64_t count, DataType type, int root);
  void barrier();
  // A new group of the ranks that pass the same color, ordered by key (MPI_Comm_split
  // semantics); every rank of this group must call it. The new group is owned by the caller.
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name);
  // Print "moekit: error (rank R of W): message" to stderr and terminate every process of the
  // job with a non-zero exit. Never returns. May be called from another thread than the one
  // blocked in a collective (the watchdog's).
  [[noreturn]] virtual void abort(int code, const std::string& message) = 0;
  // World ranks of this group's members, in group rank order (names peers in messages).
  const std::vector<int>& members() const { return members_; }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats{}; }

  // ---- typed conveniences ----
  template <typename T>
  void all_reduce(T* data, int64_t count, ReduceOp op = ReduceOp::kSum) {
    all_reduce(static_cast<void*>(data), count, data_type_of<T>(), op);
  }
  template <typename T>
  T all_reduce_value(T v, ReduceOp op = ReduceOp::kSum) {
    all_reduce(&v, 1, op);
    return v;
  }
  template <typename T>
  void all_gather(T* out, const T* in, int64_t count) {
    all_gather(static_cast<void*>(out), static_cast<const void*>(in), count, data_type_of<T>());
  }
  template <typename T>
  void broadcast(T* data, int64_t count, int root) {
    broadcast(static_cast<void*>(data), count, data_type_of<T>(), root);
  }

 protected:
  explicit Communicator(std::string name) : name_(std::move(name)) {}
  // The backend's collectives, with the contracts of the public functions above.
  virtual void do_all_reduce(void* data, int64_t count, DataType type, ReduceOp op) = 0;
  virtual void do_reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp op) = 0;
  virtual void do_all_gather(void* out, const void* in, int64_t count, DataType type) = 0;
  virtual void do_reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type, ReduceOp op) = 0;
  virtual void do_all_gather_v(void* out, const void* in, const int64_t* counts, DataType type) = 0;
  virtual void do_all_to_all(void* out, const void* in, int64_t count, DataType type) = 0;
  virtual void do_all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs, const void* send,
                               const int64_t* send_counts, const int64_t* send_displs, int64_t unit,
                               DataType type) = 0;
  virtual void do_broadcast(void* data, int64_t count, DataType type, int root) = 0;
  virtual void do_barrier() = 0;
  virtual std::unique_ptr<Communicator> do_split(int color, int key, const std::string& name) = 0;

  CommStats stats_;
  std::vector<int> members_;  // filled by the backend's constructor

 private:
  std::string name_;
};

// One process: size 1, rank 0; collectives copy input to output (avg/sum/max of one value is
// that value). abort() prints the message and exits the process with `code`.
class LocalCommunicator final : public Communicator {
 public:
  // How an exchange moves bytes: memmove on host memory (the default); a group of one on a device
  // backend passes the backend's copy (parallel/device_groups.cpp).
  using CopyFn = std::function<void(void* dst, const void* src, size_t bytes)>;
  // world_rank: this process's rank in the job (a group of one inside a multi-rank job).
  explicit LocalCommunicator(std::string name = "local", CopyFn copy = nullptr, int world_rank = 0)
      : Communicator(std::move(name)), copy_(std::move(copy)), world_rank_(world_rank) {
    members_ = {world_rank};
  }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int world_rank() const override { return world_rank_; }
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
  void do_barrier() override {}
  std::unique_ptr<Communicator> do_split(int color, int key, const std::string& name) override;

 private:
  void copy(void* out, const void* in, size_t bytes) const;
  CopyFn copy_;
  int world_rank_;
};

// Print "moekit: error (rank R of W): message" and MPI_Abort the whole job (or print and exit
// when MPI is not running). Used by every backend's abort() and by run_or_abort() when a rank
// throws. Defined in mpi_communicator.cpp.
[[noreturn]] void abort_job(int code, const std::string& message);

// Shared by the backends: checks that an all_to_all_v's counts and displacements are
// non-negative (a negative count is a dispatcher bug that MPI would turn into a crash on
// another rank). Errors name the group and the peer.
void check_all_to_all_v(const Communicator& c, const int64_t* recv_counts, const int64_t* recv_displs,
                        const int64_t* send_counts, const int64_t* send_displs);

}  // namespace moekit::parallel
