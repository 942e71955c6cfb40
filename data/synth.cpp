// Synthetic corpus generator (topics x sparse second-order Markov chains + copy segments) and
// its entropy bookkeeping; see synth.h for the process and docs/DATA.md for the figures.
#include "data/synth.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/rng.h"
#include "data/file_io.h"
#include "data/indexed_dataset.h"

namespace moekit::data {

namespace {
// Per-document draws are indexed doc * kDrawsPerDoc + step; max_doc_len is capped below it.
constexpr uint64_t kDrawsPerDoc = uint64_t{1} << 24;
constexpr int64_t kMaxDocLen = int64_t{1} << 22;
// Empirical bigram entropy sorts one 64-bit key per token; beyond this the estimate uses a prefix.
constexpr size_t kBigramSample = size_t{1} << 24;

inline double u01(uint32_t w) { return (static_cast<double>(w) + 0.5) * (1.0 / 4294967296.0); }

inline double plogp(double p) { return p > 0 ? p * std::log(p) : 0.0; }
}  // namespace

void SynthConfig::validate() const {
  MOEKIT_CHECK(vocab_size >= 3 && vocab_size <= (int64_t{1} << 31), "synth: vocab_size ", vocab_size,
               " must be in [3, 2^31] (EOS, COPY and at least one regular token)");
  MOEKIT_CHECK((num_tokens > 0) != (num_docs > 0), "synth: give exactly one of tokens (", num_tokens, ") and docs (",
               num_docs, ")");
  MOEKIT_CHECK(eos_id >= 0 && eos_id < vocab_size, "synth: eos_id ", eos_id, " out of range [0, ", vocab_size, ")");
  MOEKIT_CHECK(copy_id >= 0 && copy_id < vocab_size && copy_id != eos_id, "synth: copy_id ", copy_id,
               " must be in [0, ", vocab_size, ") and differ from eos_id ", eos_id);
  MOEKIT_CHECK(num_topics >= 1 && num_topics <= 65536, "synth: topics ", num_topics, " must be in [1, 65536]");
  MOEKIT_CHECK(branching >= 1 && branching <= 1024, "synth: branching ", branching, " must be in [1, 1024]");
  MOEKIT_CHECK(context_classes >= 1 && context_classes <= 1024, "synth: context_classes ", context_classes,
               " must be in [1, 1024]");
  MOEKIT_CHECK(zipf_s > 0 && zipf_s < 10, "synth: zipf_s ", zipf_s, " must be in (0, 10)");
  MOEKIT_CHECK(successor_decay >= 0 && successor_decay < 10, "synth: successor_decay ", successor_decay,
               " must be in [0, 10)");
  MOEKIT_CHECK(min_doc_len >= 2, "synth: min_doc_len ", min_doc_len, " must be >= 2");
  MOEKIT_CHECK(mean_doc_len > min_doc_len, "synth: mean_doc_len ", mean_doc_len, " must exceed min_doc_len ",
               min_doc_len);
  MOEKIT_CHECK(max_doc_len >= mean_doc_len && max_doc_len <= kMaxDocLen, "synth: max_doc_len ", max_doc_len,
               " must be in [mean_doc_len = ", mean_doc_len, ", ", kMaxDocLen, "]");
  MOEKIT_CHECK(copy_prob >= 0 && copy_prob <= 0.5, "synth: copy_prob ", copy_prob, " must be in [0, 0.5]");
  MOEKIT_CHECK(copy_min >= 1 && copy_max >= copy_min, "synth: copy lengths [", copy_min, ", ", copy_max,
               "] must satisfy 1 <= copy_min <= copy_max");
}

SynthGenerator::SynthGenerator(const SynthConfig& cfg)
    : cfg_(cfg),
      doc_rng_(cfg.seed, "synth.doc"),
      topic_rng_(cfg.seed, "synth.doc_topic"),
      succ_rng_(cfg.seed, "synth.successors") {
  cfg_.validate();
  const int64_t v = cfg_.vocab_size;
  regular_.reserve(static_cast<size_t>(v - 2));
  for (int64_t t = 0; t < v; ++t)
    if (t != cfg_.eos_id && t != cfg_.copy_id) regular_.push_back(t);
  const int64_t r = static_cast<int64_t>(regular_.size());

  // Zipf over ranks, shared by all topics; a topic is a permutation of the tokens over ranks.
  cdf_.resize(static_cast<size_t>(r));
  double total = 0;
  for (int64_t i = 0; i < r; ++i) total += std::pow(static_cast<double>(i + 1), -cfg_.zipf_s);
  double acc = 0;
  zipf_entropy_ = 0;
  for (int64_t i = 0; i < r; ++i) {
    const double p = std::pow(static_cast<double>(i + 1), -cfg_.zipf_s) / total;
    acc += p;
    cdf_[i] = acc;
    zipf_entropy_ -= plogp(p);
  }
  cdf_.back() = 1.0;

  perm_.resize(cfg_.num_topics);
  std::vector<std::pair<uint64_t, int64_t>> keyed(static_cast<size_t>(r));
  for (int z = 0; z < cfg_.num_topics; ++z) {
    CounterRng rng(cfg_.seed, "synth.topic" + std::to_string(z));
    for (int64_t i = 0; i < r; ++i) {
      Philox4 b = rng.bits(static_cast<uint64_t>(i));
      keyed[i] = {(static_cast<uint64_t>(b[0]) << 32) | b[1], regular_[i]};
    }
    std::sort(keyed.begin(), keyed.end());
    perm_[z].resize(static_cast<size_t>(r));
    for (int64_t i = 0; i < r; ++i) perm_[z][i] = keyed[i].second;
  }

  succ_weight_.resize(cfg_.branching);
  double wsum = 0;
  for (int j = 0; j < cfg_.branching; ++j) wsum += succ_weight_[j] = std::pow(j + 1.0, -cfg_.successor_decay);
  for (double& w : succ_weight_) w /= wsum;
}

int64_t SynthGenerator::sample_rank(uint32_t word) const {
  const double u = u01(word);
  int64_t i = std::upper_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin();
  return std::min<int64_t>(i, static_cast<int64_t>(cdf_.size()) - 1);
}

int SynthGenerator::topic(int64_t doc) const {
  return static_cast<int>(topic_rng_.bits(static_cast<uint64_t>(doc))[0] %
                          static_cast<uint32_t>(cfg_.num_topics));
}

std::vector<std::pair<int64_t, double>> SynthGenerator::successors(int topic, int64_t prev, int64_t prev2) const {
  // Context index (topic, prev, class(prev2)) -> B draws from the topic marginal. The table is
  // never stored: the counter RNG recomputes any row on demand, so memory stays O(V * K).
  const CounterRng& rng = succ_rng_;
  const int b = cfg_.branching;
  const uint64_t blocks = (static_cast<uint64_t>(b) + 3) / 4;
  const uint64_t ctx = (static_cast<uint64_t>(topic) * static_cast<uint64_t>(cfg_.vocab_size) +
                        static_cast<uint64_t>(prev)) *
                           static_cast<uint64_t>(cfg_.context_classes) +
                       static_cast<uint64_t>(prev2 % cfg_.context_classes);
  std::vector<std::pair<int64_t, double>> out;
  out.reserve(b);
  Philox4 words{};
  for (int j = 0; j < b; ++j) {
    if (j % 4 == 0) words = rng.bits(ctx * blocks + static_cast<uint64_t>(j / 4));
    const int64_t tok = perm_[topic][sample_rank(words[j % 4])];
    bool merged = false;
    for (auto& e : out)
      if (e.first == tok) {
        e.second += succ_weight_[j];
        merged = true;
        break;
      }
    if (!merged) out.emplace_back(tok, succ_weight_[j]);
  }
  return out;
}

std::vector<int64_t> SynthGenerator::document(int64_t doc, double* entropy_sum, int64_t* copies,
                                              int64_t* copied) const {
  const CounterRng& rng = doc_rng_;
  const int z = topic(doc);
  const uint64_t base = static_cast<uint64_t>(doc) * kDrawsPerDoc;
  const double hazard = 1.0 / static_cast<double>(cfg_.mean_doc_len - cfg_.min_doc_len);
  double h = 0;
  int64_t n_copies = 0, n_copied = 0;

  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(2 * cfg_.mean_doc_len));
  uint64_t step = 0;
  out.push_back(perm_[z][sample_rank(rng.bits(base + step++)[1])]);
  h += zipf_entropy_;

  int64_t copy_src = 0, copy_left = 0;
  std::vector<int64_t> scratch;
  while (true) {
    const int64_t t = static_cast<int64_t>(out.size());
    if (copy_left > 0) {  // deterministic given the copy source: entropy 0 (counted at the marker)
      out.push_back(out[copy_src++]);
      --copy_left;
      ++n_copied;
      continue;
    }
    if (t >= cfg_.max_doc_len - 1) {  // forced end
      out.push_back(cfg_.eos_id);
      break;
    }
    const Philox4 w = rng.bits(base + step++);
    const double p_eos = t >= cfg_.min_doc_len ? hazard : 0.0;
    // A copy needs copy_min earlier tokens and room for the marker, the copy and the EOS.
    const bool can_copy = cfg_.copy_prob > 0 && t >= cfg_.copy_min && t + 1 + cfg_.copy_min <= cfg_.max_doc_len - 1;
    const double p_copy = can_copy ? cfg_.copy_prob : 0.0;
    const double p_markov = 1.0 - p_eos - p_copy;
    const auto succ = successors(z, out[t - 1], t >= 2 ? out[t - 2] : out[t - 1]);
    double step_entropy = -plogp(p_eos) - plogp(p_copy);
    for (const auto& e : succ) step_entropy -= plogp(p_markov * e.second);
    h += step_entropy;

    const double u = u01(w[0]);
    if (u < p_eos) {
      out.push_back(cfg_.eos_id);
      break;
    }
    if (u < p_eos + p_copy) {
      out.push_back(cfg_.copy_id);
      const int64_t span = cfg_.copy_max - cfg_.copy_min + 1;
      int64_t c = cfg_.copy_min + static_cast<int64_t>(w[2] % static_cast<uint32_t>(span));
      c = std::min({c, t, cfg_.max_doc_len - 2 - t});
      const int64_t s = static_cast<int64_t>(w[3] % static_cast<uint32_t>(t - c + 1));
      // The first copied token: the oracle knows c but not s, so it faces the token
      // distribution of out[0..t-c] (uniform over source positions).
      scratch.assign(out.begin(), out.begin() + (t - c + 1));
      std::sort(scratch.begin(), scratch.end());
      const double m = static_cast<double>(scratch.size());
      for (size_t i = 0; i < scratch.size();) {
        size_t j = i;
        while (j < scratch.size() && scratch[j] == scratch[i]) ++j;
        h -= plogp(static_cast<double>(j - i) / m);
        i = j;
      }
      copy_src = s;
      copy_left = c;
      ++n_copies;
      continue;
    }
    // Markov step: sample from the successor distribution with the block's second word.
    const double v = u01(w[1]);
    double acc = 0;
    int64_t tok = succ.back().first;
    for (const auto& e : succ) {
      acc += e.second;
      if (v < acc) {
        tok = e.first;
        break;
      }
    }
    out.push_back(tok);
  }
  if (entropy_sum) *entropy_sum = h;
  if (copies) *copies = n_copies;
  if (copied) *copied = n_copied;
  return out;
}

double unigram_entropy(const std::vector<int64_t>& tokens) {
  if (tokens.empty()) return 0;
  std::vector<int64_t> s(tokens);
  std::sort(s.begin(), s.end());
  const double n = static_cast<double>(s.size());
  double h = 0;
  for (size_t i = 0; i < s.size();) {
    size_t j = i;
    while (j < s.size() && s[j] == s[i]) ++j;
    h -= plogp(static_cast<double>(j - i) / n);
    i = j;
  }
  return h;
}

double bigram_conditional_entropy(const std::vector<int64_t>& tokens) {
  if (tokens.size() < 2) return 0;
  // H(X_t | X_{t-1}) = H(X_{t-1}, X_t) - H(X_{t-1}) over the n-1 pairs.
  std::vector<std::pair<int64_t, int64_t>> pairs(tokens.size() - 1);
  for (size_t i = 0; i + 1 < tokens.size(); ++i) pairs[i] = {tokens[i], tokens[i + 1]};
  std::sort(pairs.begin(), pairs.end());
  const double n = static_cast<double>(pairs.size());
  double joint = 0, marg = 0;
  for (size_t i = 0; i < pairs.size();) {
    size_t j = i;
    while (j < pairs.size() && pairs[j] == pairs[i]) ++j;
    joint -= plogp(static_cast<double>(j - i) / n);
    i = j;
  }
  for (size_t i = 0; i < pairs.size();) {
    size_t j = i;
    while (j < pairs.size() && pairs[j].first == pairs[i].first) ++j;
    marg -= plogp(static_cast<double>(j - i) / n);
    i = j;
  }
  return joint - marg;
}

SynthStats write_synth_corpus(const std::string& prefix, const SynthConfig& cfg) {
  SynthGenerator gen(cfg);
  IndexedDatasetWriter writer(prefix, cfg.vocab_size);
  SynthStats st;
  st.log_vocab = std::log(static_cast<double>(cfg.vocab_size));
  st.min_doc_len = cfg.max_doc_len;
  std::vector<int64_t> counts(static_cast<size_t>(cfg.vocab_size), 0);
  std::vector<int64_t> sample;  // the first kBigramSample tokens, for the bigram estimate
  double entropy_total = 0;

  // Documents are generated in parallel blocks and appended in order: document d depends only on
  // (seed, d), so the output does not depend on the thread count.
  constexpr int64_t kBlock = 512;
  std::vector<std::vector<int64_t>> docs(kBlock);
  std::vector<double> ent(kBlock);
  std::vector<int64_t> cps(kBlock), cpd(kBlock);
  bool done = false;
  for (int64_t first = 0; !done; first += kBlock) {
    int64_t count = kBlock;
    if (cfg.num_docs > 0) count = std::min(kBlock, cfg.num_docs - first);
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t i = 0; i < count; ++i) docs[i] = gen.document(first + i, &ent[i], &cps[i], &cpd[i]);
    for (int64_t i = 0; i < count && !done; ++i) {
      const auto& d = docs[i];
      writer.add_document(d);
      entropy_total += ent[i];
      st.copy_segments += cps[i];
      st.copied_tokens += cpd[i];
      st.documents += 1;
      st.tokens += static_cast<int64_t>(d.size());
      st.min_doc_len = std::min<int64_t>(st.min_doc_len, static_cast<int64_t>(d.size()));
      st.max_doc_len = std::max<int64_t>(st.max_doc_len, static_cast<int64_t>(d.size()));
      for (int64_t t : d) ++counts[t];
      if (sample.size() < kBigramSample)
        sample.insert(sample.end(), d.begin(), d.begin() + std::min(d.size(), kBigramSample - sample.size()));
      if (cfg.num_tokens > 0 && st.tokens >= cfg.num_tokens) done = true;
    }
    if (cfg.num_docs > 0 && first + count >= cfg.num_docs) done = true;
  }
  st.entropy_bound = entropy_total / static_cast<double>(st.tokens);
  const double n = static_cast<double>(st.tokens);
  for (int64_t c : counts) st.unigram_entropy -= plogp(static_cast<double>(c) / n);
  st.bigram_entropy = bigram_conditional_entropy(sample);

  nlohmann::json j;
  j["format"] = "moekit synthetic corpus";
  j["config"] = synth_config_to_json(cfg);
  j["stats"] = synth_stats_to_json(st);
  // The sidecar goes first: the dataset appears (its .idx rename) only once everything is written.
  write_file_atomic(prefix + ".synth.json", j.dump(2) + "\n");
  writer.finish();
  return st;
}

nlohmann::json synth_config_to_json(const SynthConfig& c) {
  return {{"vocab_size", c.vocab_size},   {"tokens", c.num_tokens},
          {"docs", c.num_docs},           {"seed", c.seed},
          {"eos_id", c.eos_id},           {"copy_id", c.copy_id},
          {"topics", c.num_topics},       {"branching", c.branching},
          {"context_classes", c.context_classes}, {"zipf_s", c.zipf_s},
          {"successor_decay", c.successor_decay}, {"min_doc_len", c.min_doc_len},
          {"mean_doc_len", c.mean_doc_len},       {"max_doc_len", c.max_doc_len},
          {"copy_prob", c.copy_prob},     {"copy_min", c.copy_min},
          {"copy_max", c.copy_max}};
}

nlohmann::json synth_stats_to_json(const SynthStats& s) {
  return {{"documents", s.documents},
          {"tokens", s.tokens},
          {"copy_segments", s.copy_segments},
          {"copied_tokens", s.copied_tokens},
          {"min_doc_len", s.min_doc_len},
          {"max_doc_len", s.max_doc_len},
          {"mean_doc_len", s.documents ? static_cast<double>(s.tokens) / s.documents : 0.0},
          {"entropy_bound_nats", s.entropy_bound},
          {"unigram_entropy_nats", s.unigram_entropy},
          {"bigram_entropy_nats", s.bigram_entropy},
          {"log_vocab_nats", s.log_vocab}};
}

}  // namespace moekit::data
