#include "parallel/communicator.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/check.h"
#include "parallel/watchdog.h"

namespace moekit::parallel {

size_t data_type_size(DataType t) {
  switch (t) {
    case DataType::kF32: return 4;
    case DataType::kF64: return 8;
    case DataType::kI32: return 4;
    case DataType::kI64: return 8;
    case DataType::kU8: return 1;
  }
  MOEKIT_FAIL("unknown communicator data type ", static_cast<int>(t));
}

const char* data_type_name(DataType t) {
  switch (t) {
    case DataType::kF32: return "f32";
    case DataType::kF64: return "f64";
    case DataType::kI32: return "i32";
    case DataType::kI64: return "i64";
    case DataType::kU8: return "u8";
  }
  return "?";
}

void check_all_to_all_v(const Communicator& c, const int64_t* recv_counts, const int64_t* recv_displs,
                        const int64_t* send_counts, const int64_t* send_displs) {
  for (int r = 0; r < c.size(); ++r) {
    MOEKIT_CHECK(send_counts[r] >= 0 && send_displs[r] >= 0 && recv_counts[r] >= 0 && recv_displs[r] >= 0,
                 "all_to_all_v on group '", c.name(), "' (rank ", c.rank(), "): negative count or displacement for peer ",
                 r, " (send ", send_counts[r], " at ", send_displs[r], ", recv ", recv_counts[r], " at ", recv_displs[r],
                 ")");
  }
}

// ---- Communicator: the watchdog's scope around every backend collective ---------------------

namespace {
int64_t bytes_of(int64_t count, DataType t) { return count * static_cast<int64_t>(data_type_size(t)); }
int64_t sum_of(const int64_t* counts, int n) {
  int64_t s = 0;
  for (int r = 0; r < n; ++r) s += counts[r];
  return s;
}
}  // namespace

void Communicator::all_reduce(void* data, int64_t count, DataType type, ReduceOp op) {
  const Watchdog::Scope w(*this, "all_reduce", bytes_of(count, type));
  do_all_reduce(data, count, type, op);
}
void Communicator::reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp op) {
  const Watchdog::Scope w(*this, "reduce_scatter", bytes_of(count * size(), type));
  do_reduce_scatter(out, in, count, type, op);
}
void Communicator::all_gather(void* out, const void* in, int64_t count, DataType type) {
  const Watchdog::Scope w(*this, "all_gather", bytes_of(count, type));
  do_all_gather(out, in, count, type);
}
void Communicator::reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type, ReduceOp op) {
  const Watchdog::Scope w(*this, "reduce_scatter_v", bytes_of(sum_of(counts, size()), type));
  do_reduce_scatter_v(out, in, counts, type, op);
}
void Communicator::all_gather_v(void* out, const void* in, const int64_t* counts, DataType type) {
  const Watchdog::Scope w(*this, "all_gather_v", bytes_of(counts[rank()], type));
  do_all_gather_v(out, in, counts, type);
}
void Communicator::all_to_all(void* out, const void* in, int64_t count, DataType type) {
  const Watchdog::Scope w(*this, "all_to_all", bytes_of(count * size(), type));
  do_all_to_all(out, in, count, type);
}
void Communicator::all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs, const void* send,
                                const int64_t* send_counts, const int64_t* send_displs, int64_t unit, DataType type) {
  const Watchdog::Scope w(*this, "all_to_all_v", bytes_of(sum_of(send_counts, size()) * unit, type));
  do_all_to_all_v(recv, recv_counts, recv_displs, send, send_counts, send_displs, unit, type);
}
void Communicator::broadcast(void* data, int64_t count, DataType type, int root) {
  const Watchdog::Scope w(*this, "broadcast", bytes_of(count, type));
  do_broadcast(data, count, type, root);
}
void Communicator::barrier() {
  const Watchdog::Scope w(*this, "barrier", 0);
  do_barrier();
}
std::unique_ptr<Communicator> Communicator::split(int color, int key, const std::string& name) {
  const Watchdog::Scope w(*this, "split", 0);
  return do_split(color, key, name);
}

// ---- LocalCommunicator -------------------------------------------------------------------
// A group of one: every reduction is the identity, every exchange a copy (the constructor's copy,
// else memmove, since a caller may legitimately pass the same buffer as input and output).

void LocalCommunicator::do_all_reduce(void* data, int64_t count, DataType type, ReduceOp op) {
  MOEKIT_CHECK(count >= 0, "all_reduce: negative count ", count);
  MOEKIT_CHECK(op != ReduceOp::kAvg || type == DataType::kF32 || type == DataType::kF64,
               "all_reduce: average of integer type ", data_type_name(type));
  stats_.all_reduce_bytes += count * static_cast<int64_t>(data_type_size(type));
  ++stats_.calls;
  (void)data;
}

void LocalCommunicator::do_reduce_scatter(void* out, const void* in, int64_t count, DataType type, ReduceOp op) {
  MOEKIT_CHECK(count >= 0, "reduce_scatter: negative count ", count);
  const size_t bytes = static_cast<size_t>(count) * data_type_size(type);
  stats_.reduce_scatter_bytes += static_cast<int64_t>(bytes);
  ++stats_.calls;
  copy(out, in, bytes);
  (void)op;
}

void LocalCommunicator::do_all_gather(void* out, const void* in, int64_t count, DataType type) {
  MOEKIT_CHECK(count >= 0, "all_gather: negative count ", count);
  const size_t bytes = static_cast<size_t>(count) * data_type_size(type);
  stats_.all_gather_bytes += static_cast<int64_t>(bytes);
  ++stats_.calls;
  copy(out, in, bytes);
}

void LocalCommunicator::do_reduce_scatter_v(void* out, const void* in, const int64_t* counts, DataType type,
                                         ReduceOp op) {
  do_reduce_scatter(out, in, counts[0], type, op);
}

void LocalCommunicator::do_all_gather_v(void* out, const void* in, const int64_t* counts, DataType type) {
  do_all_gather(out, in, counts[0], type);
}

void LocalCommunicator::do_all_to_all(void* out, const void* in, int64_t count, DataType type) {
  MOEKIT_CHECK(count >= 0, "all_to_all: negative count ", count);
  const size_t bytes = static_cast<size_t>(count) * data_type_size(type);
  ++stats_.calls;
  copy(out, in, bytes);
}

void LocalCommunicator::do_all_to_all_v(void* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                                     const void* send, const int64_t* send_counts, const int64_t* send_displs,
                                     int64_t unit, DataType type) {
  check_all_to_all_v(*this, recv_counts, recv_displs, send_counts, send_displs);
  MOEKIT_CHECK(send_counts[0] == recv_counts[0], "all_to_all_v on group '", name(), "': a single rank sends ",
               send_counts[0], " units to itself but expects ", recv_counts[0]);
  ++stats_.calls;
  const size_t ub = static_cast<size_t>(unit) * data_type_size(type);
  copy(static_cast<char*>(recv) + recv_displs[0] * ub, static_cast<const char*>(send) + send_displs[0] * ub,
       send_counts[0] * ub);
}

void LocalCommunicator::do_broadcast(void* data, int64_t count, DataType type, int root) {
  MOEKIT_CHECK(root == 0, "broadcast on group '", name(), "': root ", root, " is outside a group of one");
  stats_.broadcast_bytes += count * static_cast<int64_t>(data_type_size(type));
  ++stats_.calls;
  (void)data;
}

std::unique_ptr<Communicator> LocalCommunicator::do_split(int color, int key, const std::string& name) {
  (void)color;
  (void)key;
  return std::make_unique<LocalCommunicator>(name, copy_, world_rank_);
}

void LocalCommunicator::copy(void* out, const void* in, size_t bytes) const {
  if (bytes == 0) return;
  if (copy_) copy_(out, in, bytes);
  else std::memmove(out, in, bytes);
}

void LocalCommunicator::abort(int code, const std::string& message) { abort_job(code, message); }

}  // namespace moekit::parallel
