// Training data loader: documents -> seeded per-epoch shuffle -> packed token stream ->
// windows of seq_len + 1 tokens -> global batches of G windows in a fixed order -> each
// data-parallel rank's contiguous slice. The global batches depend only on (dataset, config),
// never on the world size or rank layout: that is the parity contract of DESIGN.md section 6.
//
// Conventions (docs/DATA.md has the full story):
//  - Documents are packed back to back. They are expected to carry their own separator (synth
//    and Megatron's --append-eod end every document with EOS); with eos_id >= 0 the loader
//    appends EOS to every document that does not already end with it.
//  - Epoch e's stream is the train documents in the order of a Fisher-Yates permutation drawn
//    from CounterRng(seed, "loader.epoch<e>"). Window w of an epoch is stream tokens
//    [w*seq_len, w*seq_len + seq_len + 1): consecutive windows overlap by one token, so every
//    token is an input once and a target once (Megatron's sample layout). The tail of fewer than
//    seq_len tokens that does not fill a window is dropped for that epoch (the next epoch's
//    shuffle drops different tokens). Windows never span two epochs.
//  - The window sequence runs epoch after epoch; step s takes windows [s*G, (s+1)*G) of it, so a
//    global batch may hold the last windows of epoch e and the first of epoch e+1.
//  - Validation holds out round(valid_fraction * documents) whole documents (at least one when
//    the fraction is > 0), chosen by CounterRng(split_seed, "loader.split") — independent of the
//    shuffle seed, so runs with different seeds evaluate on the same documents. They are packed
//    in document order, never shuffled, and never appear in training.
//  - Every token packed into a window is checked against vocab_size (and, with scan_tokens,
//    the whole dataset is checked at construction); errors name the file, document and offset.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/token_dataset.h"

namespace moekit::data {

struct LoaderConfig {
  int64_t seq_len = 0;       // tokens per training sequence; a window holds seq_len + 1
  int64_t global_batch = 0;  // G: windows per step over all data-parallel ranks
  int64_t vocab_size = 0;    // every token must be in [0, vocab_size)
  uint64_t seed = 0;         // shuffle seed
  bool shuffle = true;       // false: every epoch in document order
  double valid_fraction = 0.0;
  uint64_t split_seed = 0;
  int64_t eos_id = -1;       // >= 0: append EOS to documents that do not end with it
  bool scan_tokens = true;   // check every token against vocab_size at construction
};

// Where the loader stands; enough to continue exactly where it stopped.
struct LoaderState {
  int64_t epoch = 0;   // epoch of the next window
  int64_t window = 0;  // next window within that epoch
  int64_t step = 0;    // global batches produced so far
  int64_t seq_len = 0;
  uint64_t seed = 0;
  std::string fingerprint;  // hash of the dataset, split and packing settings (hex)

  nlohmann::json to_json() const;
  static LoaderState from_json(const nlohmann::json& j);  // errors name the missing/bad field
  bool operator==(const LoaderState& o) const;
};

// Row-major (rows, seq_len) token ids; targets[r][t] = inputs[r][t+1] within the window.
struct Batch {
  int64_t rows = 0, seq_len = 0;
  std::vector<int64_t> inputs, targets;
  std::vector<int64_t> epoch, window;  // per row: which epoch and window it came from

  const int64_t* input_row(int64_t r) const { return inputs.data() + r * seq_len; }
  const int64_t* target_row(int64_t r) const { return targets.data() + r * seq_len; }
};

class Loader {
 public:
  Loader(TokenDataset data, const LoaderConfig& cfg);

  const LoaderConfig& config() const { return cfg_; }
  const TokenDataset& dataset() const { return data_; }
  int64_t num_train_documents() const { return static_cast<int64_t>(train_docs_.size()); }
  int64_t num_valid_documents() const { return static_cast<int64_t>(valid_docs_.size()); }
  const std::vector<int64_t>& train_documents() const { return train_docs_; }  // ascending
  const std::vector<int64_t>& valid_documents() const { return valid_docs_; }  // ascending
  bool is_valid_document(int64_t doc) const { return is_valid_[doc] != 0; }
  // Length of a document as packed (with the appended EOS, if any).
  int64_t packed_length(int64_t doc) const { return len_[doc]; }
  int64_t train_tokens_per_epoch() const { return train_tokens_; }
  int64_t windows_per_epoch() const { return windows_per_epoch_; }
  int64_t tokens_per_step() const { return cfg_.global_batch * cfg_.seq_len; }
  // The train documents in epoch e's order (the permutation the packed stream follows).
  std::vector<int64_t> epoch_order(int64_t epoch) const;

  // The next global batch: G windows in the fixed order. Advances the state by one step.
  Batch next_global_batch();
  // This rank's contiguous slice of the next global batch (G/W rows starting at rank*G/W),
  // built without materialising the other ranks' rows. Advances by one full step, so every
  // rank must call it once per step. G must be divisible by W.
  Batch next_batch(int rank, int world);
  static Batch slice_for_rank(const Batch& global, int rank, int world);

  // Validation: the held-out documents packed in document order into windows like training.
  // Deterministic; does not touch the training state. Typical loop:
  //   for (int64_t w = 0; w < n; w += B) eval(loader.valid_batch(w, std::min(B, n - w)));
  int64_t num_valid_windows() const { return valid_windows_; }
  Batch valid_batch(int64_t first_window, int64_t count) const;

  LoaderState state() const;
  // Continue from a saved state: the next batches equal those of an uninterrupted loader.
  // Refused (naming the field) when seq_len, seed or the dataset fingerprint differ; the global
  // batch size may change between runs, the position is kept in windows.
  void restore(const LoaderState& state);

 private:
  struct Plan {  // one packed stream: documents in order and their start offsets
    int64_t epoch = -1;
    std::vector<int64_t> order;
    std::vector<int64_t> starts;  // size order.size() + 1
  };
  void build_starts(Plan* plan) const;
  const Plan& epoch_plan(int64_t epoch);
  // out[0..seq_len] = window w of the plan's stream (vocab-checked).
  void fill_window(const Plan& plan, int64_t w, int64_t* out) const;
  void emit_row(const Plan& plan, int64_t epoch, int64_t w, int64_t row, Batch* b) const;
  Batch build(int64_t first_global_window, int64_t row_begin, int64_t row_end);

  TokenDataset data_;
  LoaderConfig cfg_;
  std::vector<int64_t> len_;         // packed length per document
  std::vector<uint8_t> append_eos_;  // per document: EOS appended by the loader
  std::vector<uint8_t> is_valid_;
  std::vector<int64_t> train_docs_, valid_docs_;
  int64_t train_tokens_ = 0, windows_per_epoch_ = 0, valid_windows_ = 0;
  Plan valid_plan_;
  Plan cache_[2];  // the two most recent epochs (a batch can straddle an epoch boundary)
  int next_slot_ = 0;
  int64_t next_window_ = 0;  // global window index: epoch * windows_per_epoch + window
  int64_t step_ = 0;
  std::string fingerprint_;
};

}  // namespace moekit::data
