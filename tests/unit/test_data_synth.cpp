// Synthetic corpus: determinism (same arguments -> same bytes, whatever the thread count;
// another seed -> other bytes), learnable structure (bigram entropy well below unigram and
// log V), and the entropy bookkeeping checked against counts of the generating contexts.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/synth.h"
#include "data/token_dataset.h"

namespace moekit::data {
namespace {

std::string temp_dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/moekit_test_data_synth_XXXXXX";
    const char* d = mkdtemp(tmpl);
    return std::string(d ? d : "/tmp");
  }();
  return dir;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

SynthConfig small_config(uint64_t seed) {
  SynthConfig c;
  c.vocab_size = 256;
  c.num_tokens = 60000;
  c.seed = seed;
  c.mean_doc_len = 120;
  return c;
}

TEST(DataSynth, SameArgumentsSameBytesAnyThreadCount) {
  const std::string a = temp_dir() + "/det_a", b = temp_dir() + "/det_b", c = temp_dir() + "/det_c";
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  SynthStats sa = write_synth_corpus(a, small_config(7));
  omp_set_num_threads(std::max(2, threads));
  SynthStats sb = write_synth_corpus(b, small_config(7));
  omp_set_num_threads(threads);
  EXPECT_EQ(slurp(a + ".bin"), slurp(b + ".bin"));
  EXPECT_EQ(slurp(a + ".idx"), slurp(b + ".idx"));
  EXPECT_EQ(slurp(a + ".synth.json"), slurp(b + ".synth.json"));
  EXPECT_EQ(sa.tokens, sb.tokens);
  EXPECT_GE(sa.tokens, 60000);

  write_synth_corpus(c, small_config(8));
  EXPECT_NE(slurp(a + ".bin"), slurp(c + ".bin"));

  // The sidecar records the config and the stats.
  nlohmann::json j = nlohmann::json::parse(slurp(a + ".synth.json"));
  EXPECT_EQ(j["config"]["seed"], 7);
  EXPECT_EQ(j["stats"]["tokens"], sa.tokens);
}

TEST(DataSynth, DocumentsAreWellFormed) {
  SynthConfig cfg = small_config(3);
  cfg.num_tokens = 0;
  cfg.num_docs = 300;
  const std::string p = temp_dir() + "/wellformed";
  SynthStats st = write_synth_corpus(p, cfg);
  EXPECT_EQ(st.documents, 300);
  TokenDataset td = TokenDataset::open(p);
  ASSERT_EQ(td.num_documents(), 300);
  EXPECT_EQ(td.num_tokens(), st.tokens);
  int64_t copies = 0;
  for (int64_t d = 0; d < td.num_documents(); ++d) {
    std::vector<int64_t> doc = td.document(d);
    ASSERT_GE(static_cast<int64_t>(doc.size()), cfg.min_doc_len + 1);
    ASSERT_LE(static_cast<int64_t>(doc.size()), cfg.max_doc_len);
    EXPECT_EQ(doc.back(), cfg.eos_id) << "document " << d;
    for (size_t i = 0; i + 1 < doc.size(); ++i) {
      ASSERT_NE(doc[i], cfg.eos_id) << "EOS inside document " << d;
      ASSERT_GE(doc[i], 0);
      ASSERT_LT(doc[i], cfg.vocab_size);
      if (doc[i] == cfg.copy_id) ++copies;
    }
  }
  EXPECT_GE(copies, st.copy_segments);  // a copied span may itself hold a marker
  EXPECT_GT(st.copy_segments, 0);
}

TEST(DataSynth, StructureIsLearnable) {
  SynthConfig cfg;
  cfg.vocab_size = 512;
  cfg.num_tokens = 400000;
  cfg.seed = 11;
  SynthStats st = write_synth_corpus(temp_dir() + "/structure", cfg);
  // Zipfian marginals: below a uniform guess; strong sequential structure: knowing the previous
  // token removes most of the remaining uncertainty; the oracle bound is lower still.
  EXPECT_LT(st.unigram_entropy, st.log_vocab - 0.5);
  EXPECT_LT(st.bigram_entropy, st.unigram_entropy - 1.5);
  EXPECT_LT(st.entropy_bound, st.bigram_entropy - 0.5);
  EXPECT_GT(st.entropy_bound, 0.5);
  // Independent of the generator's bookkeeping: the same figures recomputed from the file.
  TokenDataset td = TokenDataset::open(temp_dir() + "/structure");
  std::vector<int64_t> stream;
  for (int64_t d = 0; d < td.num_documents(); ++d) {
    auto doc = td.document(d);
    stream.insert(stream.end(), doc.begin(), doc.end());
  }
  EXPECT_NEAR(unigram_entropy(stream), st.unigram_entropy, 1e-9);
  EXPECT_NEAR(bigram_conditional_entropy(stream), st.bigram_entropy, 1e-9);
}

TEST(DataSynth, EntropyBoundMatchesCountedConditionalEntropy) {
  // Without copies every token is drawn from a distribution fixed by (topic, previous token,
  // class of the one before, position regime). The plug-in conditional entropy over those
  // contexts, counted on a large sample, must match the generator's summed entropies. Small V
  // and K keep the contexts well sampled (plug-in bias ~ cells / 2N).
  SynthConfig cfg;
  cfg.vocab_size = 24;
  cfg.num_topics = 2;
  cfg.context_classes = 2;
  cfg.branching = 4;
  cfg.copy_prob = 0;
  cfg.min_doc_len = 8;
  cfg.mean_doc_len = 40;
  cfg.num_docs = 8000;
  cfg.seed = 5;
  SynthGenerator gen(cfg);
  double bound = 0;
  int64_t n = 0;
  std::map<std::array<int64_t, 4>, std::map<int64_t, int64_t>> counts;
  for (int64_t d = 0; d < cfg.num_docs; ++d) {
    double h = 0;
    std::vector<int64_t> doc = gen.document(d, &h);
    bound += h;
    const int64_t z = gen.topic(d);
    for (size_t t = 0; t < doc.size(); ++t) {
      std::array<int64_t, 4> ctx{};
      if (t == 0) {
        ctx = {z, -1, -1, -1};
      } else {
        const int64_t prev2 = t >= 2 ? doc[t - 2] : doc[t - 1];
        ctx = {z, doc[t - 1], prev2 % cfg.context_classes, static_cast<int64_t>(t) >= cfg.min_doc_len ? 1 : 0};
      }
      ++counts[ctx][doc[t]];
    }
    n += static_cast<int64_t>(doc.size());
  }
  double counted = 0;
  for (const auto& [ctx, next] : counts) {
    int64_t total = 0;
    for (const auto& kv : next) total += kv.second;
    for (const auto& kv : next) {
      const double p = static_cast<double>(kv.second) / total;
      counted -= static_cast<double>(kv.second) * std::log(p);
    }
  }
  EXPECT_NEAR(bound / n, counted / n, 0.01) << "tokens " << n << " contexts " << counts.size();
}

TEST(DataSynth, SuccessorDistributionsAreSparseAndNormalised) {
  SynthConfig cfg = small_config(1);
  SynthGenerator gen(cfg);
  for (int z = 0; z < cfg.num_topics; ++z) {
    auto s = gen.successors(z, 17, 42);
    double sum = 0;
    for (const auto& [tok, p] : s) {
      sum += p;
      EXPECT_NE(tok, cfg.eos_id);
      EXPECT_NE(tok, cfg.copy_id);
    }
    EXPECT_NEAR(sum, 1.0, 1e-12);
    EXPECT_LE(static_cast<int>(s.size()), cfg.branching);
  }
  // The context matters: a different previous token or topic gives another distribution.
  EXPECT_NE(gen.successors(0, 17, 42), gen.successors(0, 18, 42));
  EXPECT_NE(gen.successors(0, 17, 42), gen.successors(1, 17, 42));
}

TEST(DataSynth, BadConfigsNameTheField) {
  auto expect_err = [](SynthConfig c, const std::string& want) {
    try {
      c.validate();
      ADD_FAILURE() << want;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  SynthConfig c = small_config(1);
  c.vocab_size = 2;
  expect_err(c, "vocab_size 2");
  c = small_config(1);
  c.num_docs = 5;
  expect_err(c, "exactly one of tokens");
  c = small_config(1);
  c.copy_id = c.eos_id;
  expect_err(c, "copy_id 0");
  c = small_config(1);
  c.mean_doc_len = 10;
  expect_err(c, "mean_doc_len 10");
}

}  // namespace
}  // namespace moekit::data
