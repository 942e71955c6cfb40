#include "moe/token_dispatcher.h"

#include <algorithm>
#include <numeric>

#include "core/check.h"

namespace moekit::moe {

int64_t ExchangePlan::received_rows() const {
  return std::accumulate(local_counts.begin(), local_counts.end(), int64_t{0});
}

void plan_sends(ExchangePlan* h, const std::vector<int64_t>& counts, int ep) {
  const int64_t E = static_cast<int64_t>(counts.size());
  MOEKIT_CHECK(ep >= 1 && E % ep == 0, "dispatch: num_experts ", E, " is not divisible by the expert-parallel size ",
               ep);
  h->ep = ep;
  h->local_experts = E / ep;
  h->counts = counts;
  // Peer p owns experts [p*El, (p+1)*El): its rows are one block of the sorted buffer.
  const int64_t El = h->local_experts;
  h->send_rows.assign(ep, 0);
  h->send_offsets.assign(ep, 0);
  int64_t at = 0;
  for (int p = 0; p < ep; ++p) {
    h->send_offsets[p] = at;
    for (int64_t e = p * El; e < (p + 1) * El; ++e) h->send_rows[p] += counts[e];
    at += h->send_rows[p];
  }
}

void exchange_counts(ExchangePlan* h, parallel::Communicator& ep) {
  const int P = h->ep;
  const int64_t El = h->local_experts;
  MOEKIT_CHECK(ep.size() == P, "token_dispatch: plan made for ", P, " expert-parallel ranks but group '", ep.name(),
               "' has ", ep.size());
  // Counts: block p of counts (El values, the experts of peer p) goes to peer p. The received
  // block from peer q says how many rows q sends for each of our experts.
  h->recv_counts.assign(static_cast<size_t>(P * El), 0);
  ep.all_to_all(h->recv_counts.data(), h->counts.data(), El, parallel::DataType::kI64);
  h->recv_rows.assign(P, 0);
  h->recv_offsets.assign(P, 0);
  h->local_counts.assign(El, 0);
  int64_t total = 0;
  for (int p = 0; p < P; ++p) {
    h->recv_offsets[p] = total;
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = h->recv_counts[p * El + e];
      MOEKIT_CHECK(n >= 0, "token_dispatch: peer ", p, " announced ", n, " rows for local expert ", e);
      h->recv_rows[p] += n;
      h->local_counts[e] += n;
    }
    total += h->recv_rows[p];
  }
  // Grouped position of every received row: expert-major, then source rank, then source order.
  std::vector<int64_t> next(El, 0);
  for (int64_t e = 1; e < El; ++e) next[e] = next[e - 1] + h->local_counts[e - 1];
  h->grouped_row.resize(static_cast<size_t>(total));
  int64_t i = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t e = 0; e < El; ++e)
      for (int64_t n = 0; n < h->recv_counts[p * El + e]; ++n) h->grouped_row[i++] = static_cast<int32_t>(next[e]++);
}

namespace {

// All experts local: the expert-ordered rows are the experts' rows.
class LocalDispatcher final : public TokenDispatcher {
 public:
  LocalDispatcher(backend::Backend& be, int64_t experts, int64_t hidden, DispatchScratch& scratch)
      : be_(be), experts_(experts), hidden_(hidden), scratch_(scratch), y_(be) {}
  int64_t local_experts() const override { return experts_; }

  ExpertIo dispatch(const void* xp, const std::vector<int64_t>& counts) override {
    MOEKIT_CHECK(static_cast<int64_t>(counts.size()) == experts_, "token dispatcher: ", counts.size(),
                 " expert counts for ", experts_, " experts");
    counts_ = counts;
    rows_ = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    return {xp, backend::reserve_act(y_, rows_ * hidden_), counts_.data(), rows_};
  }
  const void* combine() override { return y_.data(); }
  ExpertIo combine_backward(const void* dyp) override {
    return {dyp, backend::reserve_act(scratch_.grad, rows_ * hidden_), counts_.data(), rows_};
  }
  const void* dispatch_backward() override { return scratch_.grad.data(); }

 private:
  backend::Backend& be_;
  int64_t experts_, hidden_;
  DispatchScratch& scratch_;
  std::vector<int64_t> counts_;
  int64_t rows_ = 0;
  backend::Buffer y_;  // the experts' outputs: plan order is expert order here
};

class AllToAllDispatcher final : public TokenDispatcher {
 public:
  AllToAllDispatcher(backend::Backend& be, int64_t experts, int64_t hidden, parallel::Communicator& counts_group,
                     parallel::Communicator& rows_group, DispatchScratch& scratch)
      : be_(be), experts_(experts), hidden_(hidden), counts_group_(counts_group), rows_group_(rows_group),
        scratch_(scratch), grouped_(be), xg_(be), back_(be) {
    MOEKIT_CHECK(counts_group.size() == rows_group.size() && counts_group.rank() == rows_group.rank(),
                 "token dispatcher: the row group '", rows_group.name(), "' (rank ", rows_group.rank(), " of ",
                 rows_group.size(), ") must mirror the count group '", counts_group.name(), "' (rank ",
                 counts_group.rank(), " of ", counts_group.size(), ")");
    MOEKIT_CHECK(experts % counts_group.size() == 0, "token dispatcher: num_experts ", experts,
                 " is not divisible by the expert-parallel size ", counts_group.size());
  }
  int64_t local_experts() const override { return experts_ / counts_group_.size(); }

  ExpertIo dispatch(const void* xp, const std::vector<int64_t>& counts) override {
    MOEKIT_CHECK(static_cast<int64_t>(counts.size()) == experts_, "token dispatcher: ", counts.size(),
                 " expert counts for ", experts_, " experts");
    plan_sends(&h_, counts, counts_group_.size());
    exchange_counts(&h_, counts_group_);
    const int64_t R = h_.received_rows();
    auto* grouped =
        static_cast<int32_t*>(grouped_.reserve(sizeof(int32_t) * static_cast<size_t>(std::max<int64_t>(R, 1))));
    if (R > 0) be_.upload(grouped, h_.grouped_row.data(), sizeof(int32_t) * static_cast<size_t>(R));
    void* recv = backend::reserve_act(scratch_.recv, R * hidden_);
    exchange(recv, xp, /*to_experts=*/true);
    void* xg = backend::reserve_act(xg_, R * hidden_);
    be_.scatter_rows(xg, recv, grouped, R, hidden_);
    return {xg, backend::reserve_act(scratch_.grouped, R * hidden_), h_.local_counts.data(), R};
  }
  const void* combine() override {
    const int64_t R = h_.received_rows();
    void* recv = scratch_.recv.data();
    be_.gather_rows(recv, scratch_.grouped.data(), grouped_.as<int32_t>(), R, hidden_);  // back to received order
    // back_ holds the outputs in plan order until the backward's combine has read them;
    // dispatch_backward() reuses it after that.
    void* yp = backend::reserve_act(back_, sent_rows() * hidden_);
    exchange(yp, recv, /*to_experts=*/false);
    return yp;
  }
  ExpertIo combine_backward(const void* dyp) override {
    const int64_t R = h_.received_rows();
    void* drecv = backend::reserve_act(scratch_.recv, R * hidden_);
    exchange(drecv, dyp, /*to_experts=*/true);
    void* dyg = backend::reserve_act(scratch_.grouped, R * hidden_);
    be_.scatter_rows(dyg, drecv, grouped_.as<int32_t>(), R, hidden_);
    // xg_ still holds the inputs the experts' backward reads, so dx gets its own buffer.
    return {dyg, backend::reserve_act(scratch_.grad, R * hidden_), h_.local_counts.data(), R};
  }
  const void* dispatch_backward() override {
    const int64_t R = h_.received_rows();
    void* drecv = scratch_.recv.data();
    be_.gather_rows(drecv, scratch_.grad.data(), grouped_.as<int32_t>(), R, hidden_);
    void* dxp = backend::reserve_act(back_, sent_rows() * hidden_);
    exchange(dxp, drecv, /*to_experts=*/false);
    return dxp;
  }

 private:
  int64_t sent_rows() const { return std::accumulate(h_.send_rows.begin(), h_.send_rows.end(), int64_t{0}); }
  // Rows [send_offsets[p], +send_rows[p]) of src go to peer p, which places them at its
  // recv_offsets[me] (to_experts); the reverse exchange swaps the roles of the two layouts.
  void exchange(void* dst, const void* src, bool to_experts) {
    const int64_t* sc = to_experts ? h_.send_rows.data() : h_.recv_rows.data();
    const int64_t* sd = to_experts ? h_.send_offsets.data() : h_.recv_offsets.data();
    const int64_t* rc = to_experts ? h_.recv_rows.data() : h_.send_rows.data();
    const int64_t* rd = to_experts ? h_.recv_offsets.data() : h_.send_offsets.data();
    const size_t esz = dtype_size(be_.compute_dtype());
    // f32 rows travel as floats (units of H); other types as bytes (units of H * size).
    if (esz == sizeof(float))
      rows_group_.all_to_all_v(dst, rc, rd, src, sc, sd, hidden_, parallel::DataType::kF32);
    else
      rows_group_.all_to_all_v(dst, rc, rd, src, sc, sd, hidden_ * static_cast<int64_t>(esz),
                               parallel::DataType::kU8);
  }

  backend::Backend& be_;
  int64_t experts_, hidden_;
  parallel::Communicator& counts_group_;
  parallel::Communicator& rows_group_;
  DispatchScratch& scratch_;
  ExchangePlan h_;
  backend::Buffer grouped_, xg_, back_;  // held from dispatch to the backward
};

}  // namespace

std::unique_ptr<TokenDispatcher> make_local_dispatcher(backend::Backend& be, int64_t experts, int64_t hidden,
                                                       DispatchScratch& scratch) {
  return std::make_unique<LocalDispatcher>(be, experts, hidden, scratch);
}

std::unique_ptr<TokenDispatcher> make_all_to_all_dispatcher(backend::Backend& be, int64_t experts, int64_t hidden,
                                                            parallel::Communicator& counts_group,
                                                            parallel::Communicator& rows_group,
                                                            DispatchScratch& scratch) {
  return std::make_unique<AllToAllDispatcher>(be, experts, hidden, counts_group, rows_group, scratch);
}

}  // namespace moekit::moe
