// Geometry, output scaling and the per-layer neuron plan (see plan.h for the algorithm).
#include "upcycle/plan.h"

#include <cmath>
#include <numeric>

#include "core/check.h"
#include "core/rng.h"

namespace moekit::upcycle {

std::string expert_prefix(int64_t layer, int64_t expert) {
  return "model.layers." + std::to_string(layer) + ".mlp.experts." + std::to_string(expert) + ".";
}
std::string shared_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + ".mlp.shared_expert."; }
std::string shuffle_stream_name(int64_t layer, int64_t copy) {
  return "upcycle/shuffle/layer" + std::to_string(layer) + "/copy" + std::to_string(copy);
}
std::string neuron_stream_name(const std::string& prefix) { return "upcycle/reinit_neurons/" + prefix; }

Geometry make_geometry(const Recipe& r, const config::ModelConfig& dense) {
  Geometry g;
  g.hidden = dense.hidden_size;
  g.dense_width = dense.intermediate_size;
  g.expert_width = r.expert_intermediate_size;
  g.routed = r.num_experts;
  g.shared = r.num_shared_experts;
  g.chunks = g.routed + g.shared;
  MOEKIT_CHECK(g.expert_width > 0 && g.dense_width > 0, r.source, ": recipe not resolved (expert width ",
               g.expert_width, ", dense width ", g.dense_width, ")");
  // Qwen2 report: "the FFN is replicated ceil(n * h_E / h_FFN) times".
  g.copies = (g.chunks * g.expert_width + g.dense_width - 1) / g.dense_width;
  g.granularity = r.mode == UpcycleMode::kVirtualGroup ? g.dense_width / g.expert_width : 1;
  g.shuffle = r.mode == UpcycleMode::kQwen;
  g.shared_chunk0 = r.shared_chunks == SharedChunks::kFirst ? 0 : g.routed;
  g.routed_chunk0 = r.shared_chunks == SharedChunks::kFirst ? g.shared : 0;
  return g;
}

Scales output_scales(const Recipe& r, const Geometry& g) {
  Scales s;
  const Scaling kind = r.scaling();
  if (kind == Scaling::kNone) {
    s.note = "no output scaling";
    return s;
  }
  if (kind == Scaling::kFactor) {
    s.routed_down = r.output_scaling_factor;
    s.note = "routed down_proj scaled by the recipe's factor";
    return s;
  }
  // auto / nvidia: at step 0 with a uniform router (p = 1/E) and a zero shared gate
  // (sigmoid = 1/2), how many dense FFNs does each path add up to?
  const double E = static_cast<double>(g.routed), k = static_cast<double>(r.num_experts_per_tok);
  const double G = static_cast<double>(g.granularity);
  double routed_mult = 0, shared_mult = 0;
  if (r.mode == UpcycleMode::kCopy) {
    // k copies of the FFN weighted by 1/E each (1/k each when renormalised).
    routed_mult = r.norm_topk_prob ? 1.0 : k / E;
    shared_mult = 0.5 * static_cast<double>(g.shared);
  } else {
    // k shards weighted 1/E (1/k renormalised); k shards = k/G dense FFNs when top-k takes whole
    // virtual groups. He et al. §3: MoE_out = T / (E G^2) dense_out in their E (expansion).
    routed_mult = r.norm_topk_prob ? 1.0 / G : k / (E * G);
    shared_mult = 0.5 * static_cast<double>(g.shared) / G;
  }
  // With a shared expert each path carries half of the dense FFN.
  const double routed_target = g.shared > 0 ? 0.5 : 1.0;
  const double routed_factor = routed_target / routed_mult;
  const double shared_factor = g.shared > 0 ? 0.5 / shared_mult : 1.0;
  if (kind == Scaling::kAuto) {
    // SwiGLU is linear in down_proj, so scaling it scales the expert output exactly.
    s.routed_down = routed_factor;
    s.shared_down = shared_factor;
  } else {
    // He et al. scale both matrices of the MLP by (E G^2 / T)^(1/3) for squared ReLU and found
    // it works for SwiGLU too; here all three (gate, up, down). Not exact for SiLU.
    s.routed_gate_up = s.routed_down = std::cbrt(routed_factor);
    s.shared_gate_up = s.shared_down = std::cbrt(shared_factor);
  }
  // Exact reproduction needs: no re-initialisation, exact down scaling, routing weights that
  // sum as assumed, and a shared expert made of whole FFN copies behind a zero gate.
  const bool whole_groups =
      r.mode == UpcycleMode::kCopy || static_cast<int64_t>(r.num_experts_per_tok) % g.granularity == 0;
  const bool weights_exact = r.mode == UpcycleMode::kCopy
                                 ? (r.norm_topk_prob || r.router_init == RouterInit::kZero)
                                 : (r.norm_topk_prob && whole_groups);
  const bool shared_exact = g.shared == 0 || (r.shared_gate_init == SharedGateInit::kZero &&
                                              (r.mode == UpcycleMode::kCopy || g.shared % g.granularity == 0));
  s.function_preserving = kind == Scaling::kAuto && r.ratio() == 0 && weights_exact && shared_exact;
  if (s.function_preserving) {
    s.note = "function preserving: the step-0 MoE reproduces the dense model";
  } else if (kind == Scaling::kNvidia) {
    s.note = "nvidia scaling: cube root of the auto factor on gate, up and down (approximate for SiLU)";
  } else {
    s.note = "auto scaling assumes a uniform router; not exact here (";
    if (r.ratio() > 0) s.note += "re-initialised parameters; ";
    if (!weights_exact)
      s.note += r.mode == UpcycleMode::kCopy ? "router not zero and norm_topk_prob false; "
                                             : "needs norm_topk_prob and top-k a multiple of G; ";
    if (!shared_exact) s.note += "shared expert not whole FFN copies behind a zero gate; ";
    s.note.resize(s.note.size() - 2);
    s.note += ")";
  }
  return s;
}

std::vector<int32_t> seeded_permutation(uint64_t seed, const std::string& stream, int64_t n) {
  MOEKIT_CHECK(n >= 0 && n < (int64_t{1} << 31), "seeded_permutation: size ", n, " out of range");
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  const CounterRng rng(seed, stream);
  // Fisher-Yates from the top; step i draws j uniform in [0, i] from the 64-bit word pair of
  // block i (multiply-shift: bias below (i+1) / 2^64, far under any measurable level).
  for (int64_t i = n - 1; i > 0; --i) {
    const Philox4 b = rng.bits(static_cast<uint64_t>(i));
    const uint64_t u = (static_cast<uint64_t>(b[1]) << 32) | b[0];
    const auto j = static_cast<int64_t>((static_cast<unsigned __int128>(u) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

namespace {

// Neuron-mode selection for one expert of width w: the first round(ratio * w) entries of a
// seeded permutation, so the count is exact.
std::vector<int32_t> neuron_mask(const Recipe& r, const std::string& prefix, int64_t w) {
  std::vector<int32_t> mask(static_cast<size_t>(w), 0);
  const auto take = static_cast<int64_t>(std::llround(r.ratio() * static_cast<double>(w)));
  if (take == 0) return mask;
  const std::vector<int32_t> p = seeded_permutation(r.seed, neuron_stream_name(prefix), w);
  for (int64_t i = 0; i < take; ++i) mask[static_cast<size_t>(p[static_cast<size_t>(i)])] = 1;
  return mask;
}

}  // namespace

LayerPlan make_layer_plan(const Recipe& r, const Geometry& g, int64_t layer) {
  LayerPlan lp;
  lp.layer = layer;
  const int64_t D = g.dense_width, W = g.expert_width;
  lp.perm.resize(static_cast<size_t>(g.copies * D));
  for (int64_t c = 0; c < g.copies; ++c) {
    int32_t* dst = lp.perm.data() + c * D;
    if (g.shuffle) {
      const std::vector<int32_t> p = seeded_permutation(r.seed, shuffle_stream_name(layer, c), D);
      std::copy(p.begin(), p.end(), dst);
    } else {
      std::iota(dst, dst + D, 0);
    }
  }
  // Chunk k covers positions [k W, (k + 1) W) of the concatenated copies.
  auto fill = [&](int64_t chunk0, int64_t nchunks, std::vector<int32_t>* copy, std::vector<int32_t>* index) {
    copy->resize(static_cast<size_t>(nchunks * W));
    index->resize(static_cast<size_t>(nchunks * W));
    for (int64_t i = 0; i < nchunks * W; ++i) {
      const int64_t pos = chunk0 * W + i;
      (*copy)[static_cast<size_t>(i)] = static_cast<int32_t>(pos / D);
      (*index)[static_cast<size_t>(i)] = lp.perm[static_cast<size_t>(pos)];
    }
  };
  fill(g.routed_chunk0, g.routed, &lp.routed_copy, &lp.routed_index);
  fill(g.shared_chunk0, g.shared, &lp.shared_copy, &lp.shared_index);
  if (r.reinit_mode == ReinitMode::kNeuron && r.ratio() > 0) {
    lp.routed_reinit.reserve(static_cast<size_t>(g.routed * W));
    for (int64_t e = 0; e < g.routed; ++e) {
      const std::vector<int32_t> m = neuron_mask(r, expert_prefix(layer, e), W);
      lp.routed_reinit.insert(lp.routed_reinit.end(), m.begin(), m.end());
    }
    lp.shared_reinit = r.reinit_shared ? neuron_mask(r, shared_prefix(layer), g.shared_width())
                                       : std::vector<int32_t>(static_cast<size_t>(g.shared_width()), 0);
  }
  return lp;
}

}  // namespace moekit::upcycle
