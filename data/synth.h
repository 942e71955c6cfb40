// Synthetic corpus with learnable structure, so that loss curves mean something and a model
// with more capacity (or experts) can beat a smaller one. Every document:
//   - draws a topic z (uniform over K); each topic has its own Zipfian unigram marginal (a
//     random permutation of the regular tokens ranked by (rank+1)^-s);
//   - starts with a token from that marginal, then at each step emits
//       EOS       with probability h = 1/(mean_doc_len - min_doc_len) once min_doc_len is reached,
//       COPY      with probability copy_prob, followed by a verbatim copy of c in [copy_min,
//                 copy_max] earlier tokens of the same document (an induction segment),
//       otherwise a token from the successor distribution of (z, previous token,
//                 class of the token before it): B successors drawn from the topic marginal
//                 with weights (j+1)^-decay — a sparse second-order Markov chain per topic.
// Every random decision comes from CounterRng streams keyed by (seed, name) and indexed by
// document, so document d is the same whatever the thread count and the output is
// byte-identical for the same arguments.
// While generating, the entropy of the distribution each token was drawn from (given the
// topic and the copy source) is summed: its mean is a lower bound on the loss any model can
// reach on this corpus (docs/DATA.md).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"

namespace moekit::data {

struct SynthConfig {
  int64_t vocab_size = 0;
  int64_t num_tokens = 0;  // generate whole documents until at least this many tokens, or
  int64_t num_docs = 0;    // exactly this many documents (exactly one of the two is > 0)
  uint64_t seed = 0;
  int64_t eos_id = 0;
  int64_t copy_id = 1;  // marker that opens a copy segment; reserved like EOS
  int num_topics = 8;
  int branching = 8;        // successors per context
  int context_classes = 2;  // the token two back enters as (token mod classes)
  double zipf_s = 1.1;      // topic marginal: p(rank r) proportional to (r+1)^-s
  double successor_decay = 1.0;
  int64_t min_doc_len = 16;
  int64_t mean_doc_len = 256;  // sets the EOS hazard; copies make documents a little longer
  int64_t max_doc_len = 4096;  // EOS is forced at this length
  double copy_prob = 0.01;
  int64_t copy_min = 8, copy_max = 32;

  void validate() const;  // errors name the field and the value
};

struct SynthStats {
  int64_t documents = 0, tokens = 0;
  int64_t copy_segments = 0, copied_tokens = 0;
  int64_t min_doc_len = 0, max_doc_len = 0;
  double entropy_bound = 0;    // nats/token: mean entropy of each token's generating distribution
  double unigram_entropy = 0;  // empirical H(X), nats
  double bigram_entropy = 0;   // empirical H(X_t | X_{t-1}) over the packed stream, nats
  double log_vocab = 0;        // ln(vocab_size), the loss of a uniform guess
};

class SynthGenerator {
 public:
  explicit SynthGenerator(const SynthConfig& cfg);
  const SynthConfig& config() const { return cfg_; }
  int topic(int64_t doc) const;
  // Document `doc` (ends with EOS). When given, *entropy_sum receives the summed entropies (nats)
  // of the distributions its tokens were drawn from, *copies the number of copy segments and
  // *copied the copied tokens.
  std::vector<int64_t> document(int64_t doc, double* entropy_sum = nullptr, int64_t* copies = nullptr,
                                int64_t* copied = nullptr) const;
  // The successor distribution of context (topic, prev, prev2) before mixing with EOS/COPY:
  // distinct tokens with probabilities summing to 1 (exposed for tests and docs).
  std::vector<std::pair<int64_t, double>> successors(int topic, int64_t prev, int64_t prev2) const;

 private:
  int64_t sample_rank(uint32_t word) const;

  SynthConfig cfg_;
  CounterRng doc_rng_, topic_rng_, succ_rng_;  // (seed, "synth.doc" | "synth.doc_topic" | "synth.successors")
  std::vector<int64_t> regular_;            // token ids other than EOS and COPY
  std::vector<std::vector<int64_t>> perm_;  // per topic: rank -> token id
  std::vector<double> cdf_;                 // Zipf cumulative weights over ranks
  std::vector<double> succ_weight_;         // normalised (j+1)^-decay
  double zipf_entropy_ = 0;
};

// Generate and write PREFIX.bin/.idx (Megatron, document level) plus PREFIX.synth.json (the
// config and the stats), all atomically.
SynthStats write_synth_corpus(const std::string& prefix, const SynthConfig& cfg);

nlohmann::json synth_config_to_json(const SynthConfig& cfg);
nlohmann::json synth_stats_to_json(const SynthStats& stats);

// Empirical entropies of a token stream (plug-in estimates, nats).
double unigram_entropy(const std::vector<int64_t>& tokens);
double bigram_conditional_entropy(const std::vector<int64_t>& tokens);

}  // namespace moekit::data
