// Expert-parallel token dispatcher: the six phases of Megatron-Core's MoEAlltoAllTokenDispatcher,
// with local work and communication in separate functions (only the token_* phases talk to
// other ranks), so an overlap schedule can later interleave them without a rewrite.
//
//   forward                                        local/comm   buffer after the phase
//   1 dispatch_preprocess  plan, permute by expert   local      xp   (T*k, H) by global expert
//   2 token_dispatch       count exchange, a2a-v     comm       recv (R, H) by (source, expert)
//   3 dispatch_postprocess regroup by local expert   local      xg   (R, H) by (expert, source)
//     ... experts_forward(yg, xg, handle.expert_layout) ...
//   4 combine_preprocess   back to (source, expert)  local      recv (R, H)
//   5 token_combine        a2a-v back                comm       yp   (T*k, H)
//   6 combine_postprocess  unpermute, weight, sum    local      out  (T, H)
//
// The DispatchHandle built by phases 1-2 (the local plan, the per-peer and per-expert row
// counts, the regrouping permutation) is reused by phases 3-6 and by the backward pass, which
// runs the same exchanges in the opposite directions: the gradient of a dispatch is a combine
// without weights, and vice versa. No counts are exchanged again.
//
// Experts are split contiguously over the ep ranks (parallel/topology.h), so the rows a rank
// sends to peer p are one contiguous block of the expert-sorted buffer. Dropless: every
// (token, slot) pair is sent. The rows of one expert are ordered by source rank, then by token:
// a fixed order, so results do not depend on message timing.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/dispatch.h"
#include "parallel/communicator.h"

namespace moekit::moe {

struct DispatchHandle {
  DispatchPlan plan;           // phase 1: (token, slot) pairs of this rank sorted by global expert
  int ep = 1;                  // expert-parallel group size
  int64_t local_experts = 0;   // E / ep
  // Phase 2. Rows for peer p are plan rows [send_offsets[p], send_offsets[p] + send_rows[p]).
  std::vector<int64_t> send_rows, send_offsets;  // (ep), (ep)
  std::vector<int64_t> recv_counts;              // (ep, El) rows from peer p for local expert e
  std::vector<int64_t> recv_rows, recv_offsets;  // (ep), (ep)
  // Phase 3. Received rows regrouped by local expert. expert_layout has counts/offsets over the
  // El local experts (the only fields experts_forward/backward read).
  DispatchPlan expert_layout;
  std::vector<int32_t> grouped_row;  // (R) grouped position of received row i

  int64_t received_rows() const { return expert_layout.offsets.empty() ? 0 : expert_layout.offsets.back(); }
};

// ---- forward phases ---------------------------------------------------------------------

// 1 (local). idx (T, k) global expert ids. xp <- (T*k, H) rows of x in expert order.
void dispatch_preprocess(DispatchHandle* h, std::vector<float>* xp, const float* x, const int32_t* idx,
                         int64_t tokens, int64_t topk, int64_t experts, int64_t hidden, int ep);
// 2 (comm). Exchanges the per-expert counts with the ep group, then sends each peer its rows.
// recv <- (R, H) in (source rank, local expert, source order).
void token_dispatch(std::vector<float>* recv, DispatchHandle* h, const float* xp, int64_t hidden,
                    parallel::Communicator& ep);
// 3 (local). xg <- (R, H) rows regrouped by local expert (expert_layout order).
void dispatch_postprocess(std::vector<float>* xg, const float* recv, const DispatchHandle& h, int64_t hidden);
// 4 (local). recv <- (R, H) expert outputs yg put back in received order.
void combine_preprocess(std::vector<float>* recv, const float* yg, const DispatchHandle& h, int64_t hidden);
// 5 (comm). yp <- (T*k, H): every row returned to the rank that sent it, in plan order.
void token_combine(std::vector<float>* yp, const float* recv, const DispatchHandle& h, int64_t hidden,
                   parallel::Communicator& ep);
// 6 (local). out (T, H) = sum_j weights[t, j] * yp[row_of(t, j)] (slots in order j = 0..k-1).
void combine_postprocess(float* out, const float* yp, const float* weights, const DispatchHandle& h, int64_t hidden);

// The bookkeeping halves of phases 1 and 2, for dispatchers that move the rows themselves (the
// GPU model): plan_sends fills ep, local_experts and the per-peer send blocks from h->plan's
// counts and offsets; exchange_counts sends the per-expert counts to the peers and fills the
// receive side (recv_counts, recv_rows/offsets, expert_layout, grouped_row).
void plan_sends(DispatchHandle* h, int ep);
void exchange_counts(DispatchHandle* h, parallel::Communicator& ep);

// ---- backward (reuses the handle; no count exchange) ---------------------------------------

// Gradient of phase 5: dyp (T*k, H) goes to the expert owners. drecv <- (R, H).
void token_combine_backward(std::vector<float>* drecv, const float* dyp, const DispatchHandle& h, int64_t hidden,
                            parallel::Communicator& ep);
// Gradient of phase 2: drecv (R, H) goes back to the sources. dxp <- (T*k, H).
void token_dispatch_backward(std::vector<float>* dxp, const float* drecv, const DispatchHandle& h, int64_t hidden,
                             parallel::Communicator& ep);
// Phases 3 and 4 are permutations; their gradients are the inverse permutations, which are
// phases 4 and 3 themselves: d(xg) -> drecv is combine_preprocess, d(recv y) -> dyg is
// dispatch_postprocess.

}  // namespace moekit::moe
