// --verify: dense vs upcycled MoE on sample tokens (see verify.h).
#include "upcycle/verify.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "checkpoint/hf_checkpoint.h"
#include "core/check.h"
#include "core/finite.h"
#include "core/log.h"
#include "core/rng.h"
#include "model/model.h"

namespace moekit::upcycle {

namespace {

// MemAvailable from /proc/meminfo in bytes (0 when unknown).
uint64_t mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// A Model keeps f32 values and gradients: 8 bytes per parameter.
uint64_t model_bytes(const config::ModelConfig& cfg) {
  model::ParamStore s;
  model::declare_model_params(cfg, &s);
  uint64_t n = 0;
  for (const auto& p : s.specs()) n += static_cast<uint64_t>(p.numel());
  return n * 8;
}

// KL and top-1 agreement mean nothing over non-finite logits (a NaN model once "verified" with
// KL 0 and agreement 1): refuse them, naming the model and the place.
void check_finite_logits(const std::vector<float>& logits, int64_t vocab, const std::string& which,
                         const std::string& dir) {
  const int64_t i = first_non_finite(logits.data(), static_cast<int64_t>(logits.size()));
  MOEKIT_CHECK(i < 0, "upcycle --verify: the ", which, " model ", dir, " gives a non-finite logit (",
               i < 0 ? 0.f : logits[static_cast<size_t>(i)], " at token ", i / vocab, ", vocabulary entry ", i % vocab,
               "): its weights are broken or overflow");
}

}  // namespace

std::vector<int64_t> verify_tokens(uint64_t seed, int64_t vocab, int64_t n) {
  MOEKIT_CHECK(n >= 2, "--verify-tokens: need at least 2 tokens, got ", n);
  const CounterRng rng(seed, "upcycle/verify_tokens");
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Philox4 b = rng.bits(static_cast<uint64_t>(i));
    const uint64_t u = (static_cast<uint64_t>(b[1]) << 32) | b[0];
    t[static_cast<size_t>(i)] =
        static_cast<int64_t>((static_cast<unsigned __int128>(u) * static_cast<uint64_t>(vocab)) >> 64);
  }
  return t;
}

double logit_kl(const float* p, const float* q, int64_t n) {
  const double mp = *std::max_element(p, p + n), mq = *std::max_element(q, q + n);
  double sp = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    sp += std::exp(p[i] - mp);
    sq += std::exp(q[i] - mq);
  }
  const double lp = mp + std::log(sp), lq = mq + std::log(sq);
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = p[i] - lp, b = q[i] - lq;
    kl += std::exp(a) * (a - b);
  }
  return std::max(0.0, kl);
}

VerifyResult verify_upcycle(const std::string& dense_dir, const std::string& moe_dir,
                            const std::vector<int64_t>& tokens) {
  const config::ModelConfig dcfg = config::load_model_config(dense_dir);
  const config::ModelConfig mcfg = config::load_model_config(moe_dir);
  const uint64_t need = model_bytes(dcfg) + model_bytes(mcfg);
  const uint64_t avail = mem_available();
  MOEKIT_CHECK(avail == 0 || need < avail / 10 * 9, "--verify loads both models in f32 on the CPU: needs about ",
               static_cast<double>(need) / 1e9, " GB of memory, ", static_cast<double>(avail) / 1e9,
               " GB available; run without --verify (or verify a smaller model)");
  const auto T = static_cast<int64_t>(tokens.size());
  std::vector<int64_t> targets(static_cast<size_t>(T), -1);
  for (int64_t t = 0; t + 1 < T; ++t) targets[static_cast<size_t>(t)] = tokens[static_cast<size_t>(t + 1)];
  model::LossConfig lc;
  lc.aux = model::AuxLossForm::kNone;
  VerifyResult res;
  res.tokens = T;
  std::vector<float> dense_logits;
  {
    auto m = checkpoint::load_hf_model(dense_dir);
    res.dense_loss = m->forward(tokens.data(), targets.data(), 1, T, lc, /*train=*/false).ce;
    dense_logits = m->logits();
    check_finite_logits(dense_logits, dcfg.vocab_size, "dense", dense_dir);
  }
  auto m = checkpoint::load_hf_model(moe_dir);
  res.moe_loss = m->forward(tokens.data(), targets.data(), 1, T, lc, /*train=*/false).ce;
  const std::vector<float>& moe_logits = m->logits();
  check_finite_logits(moe_logits, mcfg.vocab_size, "upcycled MoE", moe_dir);
  const int64_t V = dcfg.vocab_size;
  MOEKIT_CHECK(mcfg.vocab_size == V, moe_dir, ": vocab_size ", mcfg.vocab_size, " differs from the dense ", V);
  int64_t agree = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* a = dense_logits.data() + t * V;
    const float* b = moe_logits.data() + t * V;
    res.kl += logit_kl(a, b, V) / static_cast<double>(T);
    for (int64_t v = 0; v < V; ++v)
      res.max_abs_logit_diff = std::max(res.max_abs_logit_diff, static_cast<double>(std::fabs(a[v] - b[v])));
    agree += (std::max_element(a, a + V) - a) == (std::max_element(b, b + V) - b);
  }
  res.top1_agreement = static_cast<double>(agree) / static_cast<double>(T);
  return res;
}

}  // namespace moekit::upcycle
