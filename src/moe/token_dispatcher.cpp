#include "moe/token_dispatcher.h"

#include <cstring>

#include "core/check.h"

namespace moekit::moe {

namespace {

// Rows [send_offsets[p], +send_rows[p]) of src go to peer p, which places them at its
// recv_offsets[me] (to_experts); the reverse exchange swaps the roles of the two layouts.
void exchange(float* dst, const float* src, const DispatchHandle& h, int64_t hidden, parallel::Communicator& ep,
              bool to_experts) {
  const int64_t* sc = to_experts ? h.send_rows.data() : h.recv_rows.data();
  const int64_t* sd = to_experts ? h.send_offsets.data() : h.recv_offsets.data();
  const int64_t* rc = to_experts ? h.recv_rows.data() : h.send_rows.data();
  const int64_t* rd = to_experts ? h.recv_offsets.data() : h.send_offsets.data();
  ep.all_to_all_v(dst, rc, rd, src, sc, sd, hidden, parallel::DataType::kF32);
}

}  // namespace

void dispatch_preprocess(DispatchHandle* h, std::vector<float>* xp, const float* x, const int32_t* idx, int64_t T,
                         int64_t k, int64_t E, int64_t H, int ep) {
  h->plan = make_dispatch_plan(idx, T, k, E);
  plan_sends(h, ep);
  xp->resize(static_cast<size_t>(T * k * H));
  dispatch_rows(xp->data(), x, h->plan, H);
}

void plan_sends(DispatchHandle* h, int ep) {
  const int64_t E = h->plan.experts;
  MOEKIT_CHECK(ep >= 1 && E % ep == 0, "dispatch: num_experts ", E, " is not divisible by the expert-parallel size ",
               ep);
  h->ep = ep;
  h->local_experts = E / ep;
  // Peer p owns experts [p*El, (p+1)*El): its rows are one block of the sorted buffer.
  const int64_t El = h->local_experts;
  h->send_rows.assign(ep, 0);
  h->send_offsets.assign(ep, 0);
  for (int p = 0; p < ep; ++p) {
    h->send_offsets[p] = h->plan.offsets[p * El];
    h->send_rows[p] = h->plan.offsets[(p + 1) * El] - h->plan.offsets[p * El];
  }
}

void exchange_counts(DispatchHandle* h, parallel::Communicator& ep) {
  const int P = h->ep;
  const int64_t El = h->local_experts;
  MOEKIT_CHECK(ep.size() == P, "token_dispatch: plan made for ", P, " expert-parallel ranks but group '", ep.name(),
               "' has ", ep.size());
  // Counts: block p of plan.counts (El values, the experts of peer p) goes to peer p. The
  // received block from peer q says how many rows q sends for each of our experts.
  h->recv_counts.assign(static_cast<size_t>(P * El), 0);
  ep.all_to_all(h->recv_counts.data(), h->plan.counts.data(), El, parallel::DataType::kI64);
  h->recv_rows.assign(P, 0);
  h->recv_offsets.assign(P, 0);
  DispatchPlan& L = h->expert_layout;
  L = DispatchPlan{};
  L.experts = El;
  L.topk = 1;
  L.counts.assign(El, 0);
  L.offsets.assign(El + 1, 0);
  int64_t total = 0;
  for (int p = 0; p < P; ++p) {
    h->recv_offsets[p] = total;
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = h->recv_counts[p * El + e];
      MOEKIT_CHECK(n >= 0, "token_dispatch: peer ", p, " announced ", n, " rows for local expert ", e);
      h->recv_rows[p] += n;
      L.counts[e] += n;
    }
    total += h->recv_rows[p];
  }
  for (int64_t e = 0; e < El; ++e) L.offsets[e + 1] = L.offsets[e] + L.counts[e];
  L.tokens = total;
  // Grouped position of every received row: expert-major, then source rank, then source order.
  h->grouped_row.resize(static_cast<size_t>(total));
  std::vector<int64_t> next(L.offsets.begin(), L.offsets.end() - 1);
  int64_t i = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t e = 0; e < El; ++e)
      for (int64_t n = 0; n < h->recv_counts[p * El + e]; ++n) h->grouped_row[i++] = static_cast<int32_t>(next[e]++);
}

void token_dispatch(std::vector<float>* recv, DispatchHandle* h, const float* xp, int64_t H,
                    parallel::Communicator& ep) {
  exchange_counts(h, ep);
  recv->resize(static_cast<size_t>(h->received_rows() * H));
  exchange(recv->data(), xp, *h, H, ep, /*to_experts=*/true);
}

void dispatch_postprocess(std::vector<float>* xg, const float* recv, const DispatchHandle& h, int64_t H) {
  const int64_t R = h.received_rows();
  xg->resize(static_cast<size_t>(R * H));
  float* out = xg->data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < R; ++i)
    std::memcpy(out + static_cast<int64_t>(h.grouped_row[i]) * H, recv + i * H, H * sizeof(float));
}

void combine_preprocess(std::vector<float>* recv, const float* yg, const DispatchHandle& h, int64_t H) {
  const int64_t R = h.received_rows();
  recv->resize(static_cast<size_t>(R * H));
  float* out = recv->data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < R; ++i)
    std::memcpy(out + i * H, yg + static_cast<int64_t>(h.grouped_row[i]) * H, H * sizeof(float));
}

void token_combine(std::vector<float>* yp, const float* recv, const DispatchHandle& h, int64_t H,
                   parallel::Communicator& ep) {
  yp->resize(static_cast<size_t>(h.plan.tokens * h.plan.topk * H));
  exchange(yp->data(), recv, h, H, ep, /*to_experts=*/false);
}

void combine_postprocess(float* out, const float* yp, const float* weights, const DispatchHandle& h, int64_t H) {
  combine_rows(out, 0.f, yp, weights, h.plan, H);
}

void token_combine_backward(std::vector<float>* drecv, const float* dyp, const DispatchHandle& h, int64_t H,
                            parallel::Communicator& ep) {
  drecv->resize(static_cast<size_t>(h.received_rows() * H));
  exchange(drecv->data(), dyp, h, H, ep, /*to_experts=*/true);
}

void token_dispatch_backward(std::vector<float>* dxp, const float* drecv, const DispatchHandle& h, int64_t H,
                             parallel::Communicator& ep) {
  dxp->resize(static_cast<size_t>(h.plan.tokens * h.plan.topk * H));
  exchange(dxp->data(), drecv, h, H, ep, /*to_experts=*/false);
}

}  // namespace moekit::moe
