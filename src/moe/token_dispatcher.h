// Token dispatchers: how the rows of a MoE layer's local dispatch plan reach the experts that
// own them and come back. The MoE layer (moe_layer.h) permutes its (token, slot) pairs into
// expert order (the backend's dispatch_plan + gather_rows), hands that buffer to a dispatcher,
// runs its experts on what the dispatcher gives it, and combines what comes back. A dispatcher
// is the extension point for other transports (an overlapped all-to-all, a DeepEP-style
// kernel): the layer does not know which one it talks to.
//
//   local        every expert is on this rank: the expert-ordered buffer is the experts' input.
//   all-to-all   expert parallelism (Megatron-Core's MoEAlltoAllTokenDispatcher phases):
//                  1 count exchange   per-expert row counts to the owners (host group)
//                  2 token dispatch   rows to the owners (all-to-all-v over the data group)
//                  3 regroup          received rows grouped by local expert (scatter_rows)
//                  ... experts ...
//                  4 un-group         back to received order (gather_rows)
//                  5 token combine    rows back to their sources (all-to-all-v)
//                The backward runs the same exchanges in the opposite directions with the same
//                plan (the gradient of a dispatch is a combine without weights and vice versa);
//                no counts are exchanged again.
//
// Experts are split contiguously over the ep ranks (parallel/topology.h), so the rows a rank
// sends to peer p are one contiguous block of the expert-sorted buffer. The rows of one expert
// are ordered by source rank, then by token: a fixed order, so results do not depend on
// message timing. Counts travel over a host communicator (they are needed on the host for the
// grouped GEMMs); rows travel over a communicator of the backend's memory (the MPI group itself
// on CPUs, its NCCL mirror on GPUs).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "parallel/communicator.h"

namespace moekit::moe {

// The row bookkeeping of one all-to-all exchange (host).
struct ExchangePlan {
  int ep = 1;                    // expert-parallel group size
  int64_t local_experts = 0;     // E / ep
  std::vector<int64_t> counts;   // (E) rows of this rank's plan per global expert
  // Rows for peer p are plan rows [send_offsets[p], send_offsets[p] + send_rows[p]).
  std::vector<int64_t> send_rows, send_offsets;  // (ep), (ep)
  std::vector<int64_t> recv_counts;              // (ep, El) rows from peer p for local expert e
  std::vector<int64_t> recv_rows, recv_offsets;  // (ep), (ep)
  std::vector<int64_t> local_counts;             // (El) received rows per local expert
  std::vector<int32_t> grouped_row;              // (R) grouped position of received row i

  int64_t received_rows() const;
};

// Fills ep, local_experts, counts and the per-peer send blocks from the plan's counts.
void plan_sends(ExchangePlan* h, const std::vector<int64_t>& counts, int ep);
// Sends the per-expert counts to the peers (an all-to-all of El counts each) and fills the
// receive side: recv_counts, recv_rows/offsets, local_counts, grouped_row.
void exchange_counts(ExchangePlan* h, parallel::Communicator& ep);

// Where the experts read their input rows and write their outputs (grouped by local expert).
struct ExpertIo {
  const void* in = nullptr;
  void* out = nullptr;
  const int64_t* counts = nullptr;  // rows per local expert (host)
  int64_t rows = 0;
};

// Buffers a dispatcher needs only within one call: one set serves the dispatchers of every MoE
// layer of a model (they run one after the other), so their size is paid once, not per layer.
struct DispatchScratch {
  explicit DispatchScratch(backend::Backend& be) : recv(be), grouped(be), grad(be) {}
  backend::Buffer recv;     // rows in received order
  backend::Buffer grouped;  // expert outputs grouped by local expert (forward), dy (backward)
  backend::Buffer grad;     // the experts' dx (backward)
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  virtual int64_t local_experts() const = 0;
  // Forward. xp (R, H): this rank's rows in expert order; counts (E): rows per global expert
  // (after dropping). Returns the experts' rows: `in` stays valid until this dispatcher's next
  // dispatch (the experts' backward reads it), `out` until combine().
  virtual ExpertIo dispatch(const void* xp, const std::vector<int64_t>& counts) = 0;
  // After the experts wrote dispatch()'s out: the outputs in this rank's plan order (R, H),
  // valid until this dispatcher's dispatch_backward() (the combine's backward reads them).
  virtual const void* combine() = 0;
  // Backward. dyp (R, H): the gradient of combine()'s output. Returns where the experts read dy
  // (in) and write dx (out), grouped as in the forward.
  virtual ExpertIo combine_backward(const void* dyp) = 0;
  // After the experts wrote dx: the gradient of dispatch()'s xp (R, H).
  virtual const void* dispatch_backward() = 0;
};

// All `experts` on this rank.
std::unique_ptr<TokenDispatcher> make_local_dispatcher(backend::Backend& be, int64_t experts, int64_t hidden,
                                                       DispatchScratch& scratch);
// Expert parallelism over `counts_group` (host memory) and `rows_group` (the backend's memory):
// the same ranks in the same order, E / size experts each.
std::unique_ptr<TokenDispatcher> make_all_to_all_dispatcher(backend::Backend& be, int64_t experts, int64_t hidden,
                                                            parallel::Communicator& counts_group,
                                                            parallel::Communicator& rows_group,
                                                            DispatchScratch& scratch);

}  // namespace moekit::moe
