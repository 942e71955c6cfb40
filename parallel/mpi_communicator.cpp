#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/check.h"

namespace moekit::parallel {

namespace {

MPI_Datatype mpi_type(DataType t) {
  switch (t) {
    case DataType::kF32: return MPI_FLOAT;
    case DataType::kF64: return MPI_DOUBLE;
    case DataType::kI32: return MPI_INT32_T;
    case DataType::kI64: return MPI_INT64_T;
    case DataType::kU8: return MPI_UINT8_T;
  }
  MOEKIT_FAIL("unknown communicator data type ", static_cast<int>(t));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;  // kAvg divides afterwards: MPI has no average
    case ReduceOp::kMax: return MPI_MAX;
  }
  MOEKIT_FAIL("unknown reduce op ", static_cast<int>(op));
}

void check_avg_type(ReduceOp op, DataType t, const char* what) {
  MOEKIT_CHECK(op != ReduceOp::kAvg || t == DataType::kF32 || t == DataType::kF64, what, ": average of integer type ",
               data_type_name(t));
}

void divide(void* data, int64_t count, DataType t, int by) {
  if (t == DataType::kF32) {
    float* p = static_cast<float*>(data);
    const float s = 1.f / static_cast<float>(by);
    for (int64_t i = 0; i < count; ++i) p[i] *= s;
  } else {
    double* p = static_cast<double*>(data);
    const double s = 1.0 / by;
    for (int64_t i = 0; i < count; ++i) p[i] *= s;
  }
}

// MPI counts are int; collectives that cannot be chunked must fit.
int checked_int(int64_t v, const Communicator& c, const char* what) {
  MOEKIT_CHECK(v >= 0 && v <= INT_MAX, what, " on group '", c.name(), "': count ", v,
               " does not fit MPI's int (at most ", INT_MAX, ")");
  return static_cast<int>(v);
}

// Chunk size for the collectives that can be split into pieces.
constexpr int64_t kChunk = int64_t{1} << 30;

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, bool owned)
    : Communicator(std::move(name)), comm_(comm), owned_(owned) {
  int init = 0;
  MPI_Initialized(&init);
  MOEKIT_CHECK(init, "MpiCommunicator '", this->name(), "': MPI is not initialised");
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  // World rank of every member: translate 0..size-1 from this group to MPI_COMM_WORLD.
  MPI_Group group, world_group;
  MPI_Comm_group(comm_, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  std::vector<int> ranks(size_);
  for (int r = 0; r < size_; ++r) ranks[r] = r;
  members_.resize(size_);
  MPI_Group_translate_ranks(group, size_, ranks.data(), world_group, members_.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && !finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", false);
}

void MpiCommunicator::do_all_reduce(void* data, int64_t count, DataType type, ReduceOp op) {
  check_avg_type(op, type, "all_reduce");
  MOEKIT_CHECK(count >= 0, "all_reduce on group '", name(), "': negative count ", count);
  const size_t es = data_type_size(type);
  stats_.all_reduce_bytes += count * static_cast<int64_t>(es);
  ++stats_.calls;
  for (int64_t done = 0; done < count; done += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - done));
    MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + done * es, n, mpi_type(type), mpi_op(op), comm_);
  }
  if (op == ReduceOp::kAvg && size_ > 1) divide(data, count, type, size_);
}

void MpiCommunicator::do_reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp op) {
  check_avg_type(op, type, "reduce_scatter");
  const int n = checked_int(count, *this, "reduce_scatter");
  stats_.reduce_scatter_bytes += count * size_ * static_cast<int64_t>(data_type_size(type));
  ++stats_.calls;
  MPI_Reduce_scatter_block(in, out, n, mpi_type(type), mpi_op(op), comm_);
  if (op == ReduceOp::kAvg && size_ > 1) divide(out, count, type, size_);
}

void MpiCommunicator::do_all_gather(void* out, const void* in, int64_t count, DataType type) {
  const int n = checked_int(count, *this, "all_gather");
  stats_.all_gather_bytes += count * static_cast<int64_t>(data_type_size(type));
  ++stats_.calls;
  MPI_Allgather(in, n, mpi_type(type), out, n, mpi_type(type), comm_);
}

void MpiCommunicator::do_reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type,
                                       ReduceOp op) {
  check_avg_type(op, type, "reduce_scatter_v");
  std::vector<int> c(size_);
  int64_t total = 0;
  for (int r = 0; r < size_; ++r) total += (c[r] = checked_int(counts[r], *this, "reduce_scatter_v"));
  stats_.reduce_scatter_bytes += total * static_cast<int64_t>(data_type_size(type));
  ++stats_.calls;
  MPI_Reduce_scatter(in, out, c.data(), mpi_type(type), mpi_op(op), comm_);
  if (op == ReduceOp::kAvg && size_ > 1) divide(out, counts[rank_], type, size_);
}

void MpiCommunicator::do_all_gather_v(void* out, const void* in, const int64_t* counts, DataType type) {
  std::vector<int> c(size_), d(size_);
  int64_t total = 0;
  for (int r = 0; r < size_; ++r) {
    c[r] = checked_int(counts[r], *this, "all_gather_v");
    d[r] = checked_int(total, *this, "all_gather_v displacement");
    total += c[r];
  }
  stats_.all_gather_bytes += counts[rank_] * static_cast<int64_t>(data_type_size(type));
  ++stats_.calls;
  MPI_Allgatherv(in, c[rank_], mpi_type(type), out, c.data(), d.data(), mpi_type(type), comm_);
}

void MpiCommunicator::do_all_to_all(void* out, const void* in, int64_t count, DataType type) {
  const int n = checked_int(count, *this, "all_to_all");
  stats_.all_to_all_bytes += count * (size_ - 1) * static_cast<int64_t>(data_type_size(type));
  ++stats_.calls;
  MPI_Alltoall(in, n, mpi_type(type), out, n, mpi_type(type), comm_);
}

void MpiCommunicator::do_all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                                   const void* send, const int64_t* send_counts, const int64_t* send_displs,
                                   int64_t unit, DataType type) {
  check_all_to_all_v(*this, recv_counts, recv_displs, send_counts, send_displs);
  MOEKIT_CHECK(unit >= 1 && unit <= INT_MAX, "all_to_all_v on group '", name(), "': unit ", unit, " out of range");
  // One derived type per unit (a row of `unit` elements) keeps the int counts in rows.
  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(unit), mpi_type(type), &row);
  MPI_Type_commit(&row);
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  const int64_t ub = unit * static_cast<int64_t>(data_type_size(type));
  for (int r = 0; r < size_; ++r) {
    sc[r] = checked_int(send_counts[r], *this, "all_to_all_v send count");
    sd[r] = checked_int(send_displs[r], *this, "all_to_all_v send displacement");
    rc[r] = checked_int(recv_counts[r], *this, "all_to_all_v recv count");
    rd[r] = checked_int(recv_displs[r], *this, "all_to_all_v recv displacement");
    if (r != rank_) stats_.all_to_all_bytes += send_counts[r] * ub;
  }
  ++stats_.calls;
  MPI_Alltoallv(send, sc.data(), sd.data(), row, recv, rc.data(), rd.data(), row, comm_);
  MPI_Type_free(&row);
}

void MpiCommunicator::do_broadcast(void* data, int64_t count, DataType type, int root) {
  MOEKIT_CHECK(root >= 0 && root < size_, "broadcast on group '", name(), "': root ", root, " outside [0, ", size_,
               ")");
  const size_t es = data_type_size(type);
  if (rank_ == root) stats_.broadcast_bytes += count * static_cast<int64_t>(es);
  ++stats_.calls;
  for (int64_t done = 0; done < count; done += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - done));
    MPI_Bcast(static_cast<char*>(data) + done * es, n, mpi_type(type), root, comm_);
  }
}

void MpiCommunicator::do_barrier() { MPI_Barrier(comm_); }

std::unique_ptr<Communicator> MpiCommunicator::do_split(int color, int key, const std::string& name) {
  MPI_Comm sub;
  MPI_Comm_split(comm_, color, key, &sub);
  return std::make_unique<MpiCommunicator>(sub, name, true);
}

void MpiCommunicator::abort(int code, const std::string& message) { abort_job(code, message); }

void abort_job(int code, const std::string& message) {
  int init = 0, finalized = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&finalized);
  if (code == 0) code = 1;
  if (!init || finalized) {
    std::fprintf(stderr, "moekit: error: %s\n", message.c_str());
    std::fflush(stderr);
    std::exit(code);
  }
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::fprintf(stderr, "moekit: error (rank %d of %d): %s\n", rank, size, message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  // Open MPI terminates every process of the job (SIGTERM) and mpirun exits non-zero; ranks
  // blocked in a collective waiting for this one do not hang.
  MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);  // not reached
}

}  // namespace moekit::parallel
