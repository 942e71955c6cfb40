// Loader: windows are contiguous slices of the packed epoch stream, every train token is a
// target once per epoch (bar the tail), the validation split never leaks into training, the
// shuffle changes per epoch, rank slices reassemble the global batch for W = 1, 2, 4,
// save/restore continues exactly across an epoch boundary, and bad tokens name their position.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/indexed_dataset.h"
#include "data/loader.h"

namespace moekit::data {
namespace {

constexpr int64_t kVocab = 1 << 20;
constexpr int64_t kEos = 0;

std::string temp_dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/moekit_test_data_loader_XXXXXX";
    const char* d = mkdtemp(tmpl);
    return std::string(d ? d : "/tmp");
  }();
  return dir;
}

// Token i of document d is d * 1000 + i + 1 (so every token says where it came from); every
// document ends with EOS. Lengths vary from 2 to 40.
std::vector<int64_t> make_doc(int64_t d) {
  const int64_t len = 2 + (d * 7919) % 39;
  std::vector<int64_t> doc;
  for (int64_t i = 0; i + 1 < len; ++i) doc.push_back(d * 1000 + i + 1);
  doc.push_back(kEos);
  return doc;
}

std::string make_dataset(const std::string& name, int64_t docs) {
  const std::string prefix = temp_dir() + "/" + name;
  IndexedDatasetWriter w(prefix, kVocab);
  for (int64_t d = 0; d < docs; ++d) w.add_document(make_doc(d));
  w.finish();
  return prefix;
}

const std::string& dataset60() {
  static std::string p = make_dataset("docs60", 60);
  return p;
}

LoaderConfig base_config() {
  LoaderConfig c;
  c.seq_len = 16;
  c.global_batch = 8;
  c.vocab_size = kVocab;
  c.seed = 42;
  c.valid_fraction = 0.1;
  c.split_seed = 3;
  return c;
}

// The packed stream of an epoch, rebuilt from the documents independently of the loader.
std::vector<int64_t> epoch_stream(const Loader& l, int64_t epoch) {
  std::vector<int64_t> s;
  for (int64_t d : l.epoch_order(epoch)) {
    auto doc = make_doc(d);
    s.insert(s.end(), doc.begin(), doc.end());
  }
  return s;
}

std::vector<int64_t> window_tokens(const Batch& b, int64_t r) {
  std::vector<int64_t> w(b.input_row(r), b.input_row(r) + b.seq_len);
  w.push_back(b.target_row(r)[b.seq_len - 1]);
  return w;
}

TEST(DataLoader, WindowsAreContiguousSlicesAndEveryTokenIsATargetOncePerEpoch) {
  Loader l(TokenDataset::open(dataset60()), base_config());
  const int64_t s = l.config().seq_len, wpe = l.windows_per_epoch();
  ASSERT_GT(wpe, 2 * l.config().global_batch);
  std::vector<std::vector<int64_t>> targets_of_epoch(3);
  std::vector<int64_t> windows_seen(3, 0);
  const int64_t steps = (3 * wpe) / l.config().global_batch;
  for (int64_t step = 0; step < steps; ++step) {
    Batch b = l.next_global_batch();
    ASSERT_EQ(b.rows, l.config().global_batch);
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t e = b.epoch[r], w = b.window[r];
      ASSERT_EQ(e * wpe + w, step * b.rows + r) << "windows come in order, epoch after epoch";
      const std::vector<int64_t> stream = epoch_stream(l, e);
      std::vector<int64_t> want(stream.begin() + w * s, stream.begin() + w * s + s + 1);
      ASSERT_EQ(window_tokens(b, r), want) << "epoch " << e << " window " << w;
      for (int64_t t = 0; t + 1 < s; ++t) ASSERT_EQ(b.target_row(r)[t], b.input_row(r)[t + 1]);
      if (e < 3) {
        targets_of_epoch[e].insert(targets_of_epoch[e].end(), b.target_row(r), b.target_row(r) + s);
        ++windows_seen[e];
      }
    }
  }
  for (int64_t e = 0; e < 2; ++e) {  // epochs 0 and 1 are complete
    ASSERT_EQ(windows_seen[e], wpe);
    const std::vector<int64_t> stream = epoch_stream(l, e);
    ASSERT_EQ(static_cast<int64_t>(stream.size()), l.train_tokens_per_epoch());
    // Targets are stream[1 .. wpe*s], each exactly once; the tail is shorter than a window.
    EXPECT_EQ(targets_of_epoch[e], std::vector<int64_t>(stream.begin() + 1, stream.begin() + 1 + wpe * s));
    const int64_t tail = l.train_tokens_per_epoch() - 1 - wpe * s;
    EXPECT_GE(tail, 0);
    EXPECT_LT(tail, s);
  }
}

TEST(DataLoader, ValidationDocumentsNeverAppearInTraining) {
  Loader l(TokenDataset::open(dataset60()), base_config());
  ASSERT_EQ(l.num_valid_documents(), 6);  // round(0.1 * 60)
  EXPECT_EQ(l.num_train_documents(), 54);
  std::set<int64_t> valid(l.valid_documents().begin(), l.valid_documents().end());
  std::set<int64_t> train_seen;
  for (int step = 0; step < 40; ++step) {
    Batch b = l.next_global_batch();
    for (int64_t i = 0; i < b.rows * b.seq_len; ++i)
      for (int64_t t : {b.inputs[i], b.targets[i]})
        if (t != kEos) train_seen.insert(t / 1000);
  }
  for (int64_t d : train_seen) EXPECT_EQ(valid.count(d), 0u) << "validation document " << d << " in training";
  EXPECT_GT(train_seen.size(), 40u);
  // The validation stream is exactly the held-out documents in document order, and it is the
  // same on every call whatever the training state.
  std::vector<int64_t> vstream;
  for (int64_t d : l.valid_documents()) {
    auto doc = make_doc(d);
    vstream.insert(vstream.end(), doc.begin(), doc.end());
  }
  const int64_t n = l.num_valid_windows();
  ASSERT_EQ(n, (static_cast<int64_t>(vstream.size()) - 1) / l.config().seq_len);
  ASSERT_GT(n, 0);
  Batch v1 = l.valid_batch(0, n);
  l.next_global_batch();
  Batch v2 = l.valid_batch(0, n);
  EXPECT_EQ(v1.inputs, v2.inputs);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t s = l.config().seq_len;
    EXPECT_EQ(window_tokens(v1, r), std::vector<int64_t>(vstream.begin() + r * s, vstream.begin() + r * s + s + 1));
  }
  EXPECT_THROW(l.valid_batch(n - 1, 2), Error);
}

TEST(DataLoader, SplitDependsOnSplitSeedOnly) {
  LoaderConfig c = base_config();
  Loader a(TokenDataset::open(dataset60()), c);
  c.seed = 99;
  Loader b(TokenDataset::open(dataset60()), c);
  EXPECT_EQ(a.valid_documents(), b.valid_documents());
  c.split_seed = 4;
  Loader d(TokenDataset::open(dataset60()), c);
  EXPECT_NE(a.valid_documents(), d.valid_documents());
  c.valid_fraction = 0;
  Loader e(TokenDataset::open(dataset60()), c);
  EXPECT_EQ(e.num_valid_documents(), 0);
  EXPECT_EQ(e.num_valid_windows(), 0);
}

TEST(DataLoader, ShuffleDiffersPerEpochAndIsSeeded) {
  Loader l(TokenDataset::open(dataset60()), base_config());
  std::vector<int64_t> e0 = l.epoch_order(0), e1 = l.epoch_order(1);
  EXPECT_NE(e0, e1);
  std::vector<int64_t> s0 = e0, s1 = e1;
  std::sort(s0.begin(), s0.end());
  std::sort(s1.begin(), s1.end());
  EXPECT_EQ(s0, l.train_documents());  // a permutation of the train documents
  EXPECT_EQ(s1, l.train_documents());
  EXPECT_NE(e0, l.train_documents());
  Loader same(TokenDataset::open(dataset60()), base_config());
  EXPECT_EQ(same.epoch_order(1), e1);
  LoaderConfig c = base_config();
  c.seed = 43;
  EXPECT_NE(Loader(TokenDataset::open(dataset60()), c).epoch_order(0), e0);
  c.shuffle = false;
  EXPECT_EQ(Loader(TokenDataset::open(dataset60()), c).epoch_order(5), l.train_documents());
}

TEST(DataLoader, RankSlicesReassembleTheGlobalBatchForAnyWorld) {
  Loader ref(TokenDataset::open(dataset60()), base_config());
  std::vector<Batch> global;
  const int steps = 30;  // crosses epoch boundaries
  for (int s = 0; s < steps; ++s) global.push_back(ref.next_global_batch());
  for (int world : {1, 2, 4}) {
    std::vector<Loader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(TokenDataset::open(dataset60()), base_config());
    for (int s = 0; s < steps; ++s) {
      std::vector<int64_t> inputs, targets;
      for (int r = 0; r < world; ++r) {
        Batch b = ranks[r].next_batch(r, world);
        ASSERT_EQ(b.rows, base_config().global_batch / world);
        Batch sliced = Loader::slice_for_rank(global[s], r, world);
        EXPECT_EQ(b.inputs, sliced.inputs);
        EXPECT_EQ(b.window, sliced.window);
        inputs.insert(inputs.end(), b.inputs.begin(), b.inputs.end());
        targets.insert(targets.end(), b.targets.begin(), b.targets.end());
      }
      ASSERT_EQ(inputs, global[s].inputs) << "world " << world << " step " << s;
      ASSERT_EQ(targets, global[s].targets) << "world " << world << " step " << s;
    }
    for (int r = 0; r < world; ++r) EXPECT_EQ(ranks[r].state(), ref.state());
  }
  Loader l(TokenDataset::open(dataset60()), base_config());
  EXPECT_THROW(l.next_batch(0, 3), Error);  // 8 is not divisible by 3
  EXPECT_THROW(l.next_batch(2, 2), Error);
}

TEST(DataLoader, SaveRestoreAcrossEpochBoundaryGivesIdenticalBatches) {
  LoaderConfig c = base_config();
  c.global_batch = 5;  // does not divide windows_per_epoch: batches straddle epochs
  Loader a(TokenDataset::open(dataset60()), c);
  const int64_t wpe = a.windows_per_epoch();
  const int64_t stop = wpe / c.global_batch - 1;  // a step or two before the first boundary
  for (int64_t s = 0; s < stop; ++s) a.next_global_batch();
  const std::string saved = a.state().to_json().dump();
  LoaderState st = LoaderState::from_json(nlohmann::json::parse(saved));
  EXPECT_EQ(st, a.state());
  EXPECT_EQ(st.step, stop);

  Loader b(TokenDataset::open(dataset60()), c);
  b.restore(st);
  bool crossed = false;
  for (int s = 0; s < 3 * wpe / c.global_batch; ++s) {
    Batch x = a.next_global_batch(), y = b.next_global_batch();
    ASSERT_EQ(x.inputs, y.inputs) << "step " << stop + s;
    ASSERT_EQ(x.targets, y.targets);
    ASSERT_EQ(x.epoch, y.epoch);
    crossed = crossed || x.epoch.front() != x.epoch.back();
  }
  EXPECT_TRUE(crossed) << "no batch straddled an epoch boundary";
  EXPECT_EQ(a.state(), b.state());
  EXPECT_GE(a.state().epoch, 2);
}

TEST(DataLoader, RestoreRefusesAnotherDatasetOrSettings) {
  Loader a(TokenDataset::open(dataset60()), base_config());
  a.next_global_batch();
  LoaderState st = a.state();
  Loader other(TokenDataset::open(make_dataset("docs61", 61)), base_config());
  try {
    other.restore(st);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fingerprint"), std::string::npos) << e.what();
  }
  LoaderConfig c = base_config();
  c.seq_len = 8;
  Loader shorter(TokenDataset::open(dataset60()), c);
  EXPECT_THROW(shorter.restore(st), Error);
  nlohmann::json j = st.to_json();
  j.erase("window");
  try {
    LoaderState::from_json(j);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing field 'window'"), std::string::npos) << e.what();
  }
}

TEST(DataLoader, OutOfRangeTokenNamesFileAndPosition) {
  const std::string prefix = temp_dir() + "/badtoken";
  IndexedDatasetWriter w(prefix, kVocab);
  for (int64_t d = 0; d < 5; ++d) w.add_document(d == 3 ? std::vector<int64_t>{1, 2, 600, 0} : std::vector<int64_t>{1, 2, 3, 0});
  w.finish();
  LoaderConfig c;
  c.seq_len = 4;
  c.global_batch = 4;
  c.vocab_size = 500;  // 600 is fine for the file, not for the model
  c.shuffle = false;
  const std::string want = prefix + " document 3 (global 3) offset 2: token id 600 out of range [0, vocab_size = 500)";
  try {  // caught up front by the scan...
    Loader l(TokenDataset::open(prefix), c);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
  c.scan_tokens = false;  // ...and when packing without it
  Loader l(TokenDataset::open(prefix), c);
  try {
    l.next_global_batch();
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

TEST(DataLoader, AppendsEosWhenAsked) {
  const std::string prefix = temp_dir() + "/noeos";
  IndexedDatasetWriter w(prefix, 100);
  w.add_document({5, 6, 7});
  w.add_document({8, 9, 0});  // already ends with EOS: left alone
  w.add_document({});         // empty: becomes a lone EOS
  w.finish();
  LoaderConfig c;
  c.seq_len = 7;
  c.global_batch = 1;
  c.vocab_size = 100;
  c.shuffle = false;
  c.eos_id = 0;
  Loader l(TokenDataset::open(prefix), c);
  EXPECT_EQ(l.train_tokens_per_epoch(), 8);
  EXPECT_EQ(l.packed_length(0), 4);
  EXPECT_EQ(l.packed_length(1), 3);
  EXPECT_EQ(l.packed_length(2), 1);
  Batch b = l.next_global_batch();
  EXPECT_EQ(window_tokens(b, 0), (std::vector<int64_t>{5, 6, 7, 0, 8, 9, 0, 0}));
  c.eos_id = -1;  // documents as they are: 6 tokens, not enough for a window of 8
  EXPECT_THROW(Loader(TokenDataset::open(prefix), c), Error);
}

}  // namespace
}  // namespace moekit::data
