// Tests of optim/: AdamW against torch.optim.AdamW (fixture from tests/reference/
// gen_optim_fixture.py), mixed precision (bf16/fp16 model weights over fp32 masters), resume,
// thread-count independence, the schedules against hand-computed values, global-norm clipping
// against a double loop, the loss scaler, the NaN policy and the `optim:` config.
#include <gtest/gtest.h>
#include <omp.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "checkpoint/safetensors.h"
#include "core/half.h"
#include "optim/adamw_math.h"
#include "optim/finite.h"
#include "optim/optim.h"
#include "test_util.h"

namespace moekit::optim {
namespace {

const std::string kFixture = std::string(MOEKIT_FIXTURES_DIR) + "/optim/adamw.safetensors";

// Parameters with their own storage, handed to the optimizer as TensorRefs.
struct Params {
  std::vector<std::string> names;
  std::vector<std::vector<float>> w, g;
  void add(const std::string& name, std::vector<float> weights) {
    names.push_back(name);
    g.emplace_back(weights.size(), 0.f);
    w.push_back(std::move(weights));
  }
  // Copy into the existing buffer: the optimizer holds pointers to it.
  void set_grad(size_t i, const std::vector<float>& v) {
    ASSERT_EQ(v.size(), g[i].size()) << names[i];
    std::copy(v.begin(), v.end(), g[i].begin());
  }
  std::vector<TensorRef> refs() {
    std::vector<TensorRef> out;
    for (size_t i = 0; i < names.size(); ++i)
      out.push_back({names[i], w[i].data(), g[i].data(), static_cast<int64_t>(w[i].size())});
    return out;
  }
};

std::vector<std::string> split_csv(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) out.push_back(x);
  return out;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// ---- AdamW against PyTorch -----------------------------------------------------------------

struct TorchRun {
  checkpoint::SafetensorsFile file;
  OptimConfig cfg;
  std::vector<double> lrs;
  std::vector<std::string> names, decayed;
  int steps = 0;
};

TorchRun load_torch_run() {
  TorchRun r{checkpoint::SafetensorsFile::open(kFixture), {}, {}, {}, {}, 0};
  const auto& meta = r.file.metadata();
  r.cfg.beta1 = std::stod(meta.at("beta1"));
  r.cfg.beta2 = std::stod(meta.at("beta2"));
  r.cfg.eps = std::stod(meta.at("eps"));
  r.cfg.weight_decay = std::stod(meta.at("weight_decay"));
  r.cfg.no_decay = {"bias", "norm", "embed_tokens"};  // the defaults: the fixture's q_proj.bias is the no-decay one
  for (const auto& x : split_csv(meta.at("lrs"))) r.lrs.push_back(std::stod(x));
  r.steps = std::stoi(meta.at("steps"));
  r.decayed = split_csv(meta.at("decay"));
  r.names = r.decayed;
  for (const auto& n : split_csv(meta.at("no_decay"))) r.names.push_back(n);
  return r;
}

Params init_params(const TorchRun& r) {
  Params p;
  for (const auto& n : r.names) p.add(n, r.file.read_f32("init." + n));
  return p;
}

TEST(OptimAdamW, MatchesTorchAdamW) {
  TorchRun r = load_torch_run();
  ASSERT_EQ(r.steps, static_cast<int>(r.lrs.size()));
  ASSERT_EQ(r.names.size(), 3u);
  Params p = init_params(r);
  AdamW opt(r.cfg, p.refs());
  for (size_t i = 0; i < r.names.size(); ++i) {
    const bool want = std::find(r.decayed.begin(), r.decayed.end(), r.names[i]) != r.decayed.end();
    EXPECT_EQ(opt.decays(i), want) << r.names[i];
  }
  double worst = 0;
  for (int k = 0; k < r.steps; ++k) {
    for (size_t i = 0; i < r.names.size(); ++i) p.set_grad(i, r.file.read_f32("grad." + std::to_string(k) + "." + r.names[i]));
    opt.step(r.lrs[k]);
    EXPECT_EQ(opt.steps_taken(), k + 1);
    for (size_t i = 0; i < r.names.size(); ++i) {
      const std::string sfx = std::to_string(k) + "." + r.names[i];
      const auto w = r.file.read_f32("param." + sfx), m = r.file.read_f32("exp_avg." + sfx),
                 v = r.file.read_f32("exp_avg_sq." + sfx);
      ASSERT_EQ(w.size(), p.w[i].size());
      // Relative to the tensor's largest magnitude; the floor is far below the 1e-17 second
      // moments of the tensor whose gradients are ~1e-8.
      const double ew = test::rel_err(p.w[i].data(), w.data(), w.size(), 1e-30);
      const double em = test::rel_err(opt.exp_avg(i), m.data(), m.size(), 1e-30);
      const double ev = test::rel_err(opt.exp_avg_sq(i), v.data(), v.size(), 1e-30);
      EXPECT_LT(ew, 1e-6) << "weights " << sfx;
      EXPECT_LT(em, 1e-6) << "exp_avg " << sfx;
      EXPECT_LT(ev, 1e-6) << "exp_avg_sq " << sfx;
      EXPECT_EQ(opt.master(i), p.w[i].data()) << "fp32: the model weights are the masters";
      worst = std::max({worst, ew, em, ev});
    }
  }
  std::ostringstream os;
  os << worst;
  RecordProperty("worst_rel_err", os.str());
}

// The tensor with ~1e-8 gradients moves by about lr per step only because eps (1e-8) sits after
// sqrt(vhat): with eps inside the root (sqrt(vhat + eps)) it would move ~1e4 times less.
TEST(OptimAdamW, EpsIsAddedAfterTheRoot) {
  TorchRun r = load_torch_run();
  Params p = init_params(r);
  AdamW opt(r.cfg, p.refs());
  const size_t i = 1;  // model.layers.0.self_attn.q_proj.weight, gradients * 1e-8
  ASSERT_EQ(r.names[i], "model.layers.0.self_attn.q_proj.weight");
  const std::vector<float> before = p.w[i];
  p.set_grad(i, r.file.read_f32("grad.0." + r.names[i]));
  opt.step(r.lrs[0]);
  double moved = 0;
  for (size_t j = 0; j < before.size(); ++j)
    moved = std::max(moved, std::fabs(double(p.w[i][j]) - before[j] * (1 - r.lrs[0] * r.cfg.weight_decay)));
  EXPECT_GT(moved, 0.1 * r.lrs[0]);
  EXPECT_LT(moved, r.lrs[0] * 1.0001);
}

// Zero gradients leave m = v = 0 and a zero Adam update, so only the decoupled decay acts:
// exactly p * f32(1 - lr * wd) for decayed tensors, untouched weights for the others.
TEST(OptimAdamW, DecoupledDecayOnlyOnDecayedTensors) {
  OptimConfig c;
  c.weight_decay = 0.3;
  Params p;
  p.add("model.layers.1.mlp.up_proj.weight", test::randn(50, 1, "up"));
  p.add("model.layers.1.input_layernorm.weight", test::randn(20, 1, "ln"));
  p.add("model.embed_tokens.weight", test::randn(30, 1, "emb"));
  p.add("lm_head.weight", test::randn(30, 1, "head"));
  const Params before = p;
  AdamW opt(c, p.refs());
  EXPECT_TRUE(opt.decays(0));
  EXPECT_FALSE(opt.decays(1));
  EXPECT_FALSE(opt.decays(2));
  EXPECT_TRUE(opt.decays(3));
  const double lr = 0.01;
  opt.step(lr);
  const float keep = static_cast<float>(1 - lr * 0.3);
  for (size_t i = 0; i < p.names.size(); ++i)
    for (size_t j = 0; j < p.w[i].size(); ++j)
      ASSERT_EQ(p.w[i][j], opt.decays(i) ? before.w[i][j] * keep : before.w[i][j]) << p.names[i] << " " << j;
}

TEST(OptimAdamW, NoDecayMatchesSubstringsOfHfNames) {
  OptimConfig c;  // defaults: bias, norm, embed_tokens
  for (const char* n : {"model.layers.0.self_attn.q_proj.bias", "model.layers.3.input_layernorm.weight",
                        "model.layers.3.post_attention_layernorm.weight", "model.norm.weight",
                        "model.embed_tokens.weight", "model.layers.0.self_attn.q_norm.weight"})
    EXPECT_FALSE(applies_weight_decay(c, n)) << n;
  for (const char* n : {"lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.gate.weight",
                        "model.layers.0.mlp.experts.7.down_proj.weight", "model.layers.0.mlp.shared_expert_gate.weight"})
    EXPECT_TRUE(applies_weight_decay(c, n)) << n;
  c.no_decay = {"experts.", "lm_head"};
  EXPECT_FALSE(applies_weight_decay(c, "model.layers.0.mlp.experts.7.down_proj.weight"));
  EXPECT_FALSE(applies_weight_decay(c, "lm_head.weight"));
  EXPECT_TRUE(applies_weight_decay(c, "model.norm.weight"));
  c.no_decay.clear();
  EXPECT_TRUE(applies_weight_decay(c, "model.layers.0.self_attn.q_proj.bias"));
}

// Training 5 steps equals training 2, copying the state into a fresh optimizer (as a checkpoint
// resume does), restoring and training 3 more: bit for bit, in fp32 and with bf16 masters.
TEST(OptimAdamW, RestoreContinuesBitExactly) {
  TorchRun r = load_torch_run();
  for (Precision prec : {Precision::kFp32, Precision::kBf16}) {
    OptimConfig c = r.cfg;
    c.precision = prec;
    auto set_grads = [&](Params& p, int k) {
      for (size_t i = 0; i < r.names.size(); ++i) p.set_grad(i, r.file.read_f32("grad." + std::to_string(k) + "." + r.names[i]));
    };
    Params a = init_params(r);
    AdamW full(c, a.refs());
    for (int k = 0; k < r.steps; ++k) {
      set_grads(a, k);
      full.step(r.lrs[k]);
    }
    Params b = init_params(r);
    AdamW first(c, b.refs());
    for (int k = 0; k < 2; ++k) {
      set_grads(b, k);
      first.step(r.lrs[k]);
    }
    Params d = init_params(r);  // a fresh model: weights from init, as before a checkpoint load
    AdamW resumed(c, d.refs());
    for (size_t i = 0; i < r.names.size(); ++i) {
      const size_t n = d.w[i].size();
      std::copy(first.master(i), first.master(i) + n, resumed.master(i));
      std::copy(first.exp_avg(i), first.exp_avg(i) + n, resumed.exp_avg(i));
      std::copy(first.exp_avg_sq(i), first.exp_avg_sq(i) + n, resumed.exp_avg_sq(i));
    }
    resumed.restore(2);
    EXPECT_EQ(resumed.steps_taken(), 2);
    for (size_t i = 0; i < r.names.size(); ++i)
      EXPECT_TRUE(same_bits(d.w[i].data(), b.w[i].data(), d.w[i].size())) << "model weights after restore " << i;
    for (int k = 2; k < r.steps; ++k) {
      set_grads(d, k);
      resumed.step(r.lrs[k]);
    }
    for (size_t i = 0; i < r.names.size(); ++i) {
      const size_t n = d.w[i].size();
      EXPECT_TRUE(same_bits(d.w[i].data(), a.w[i].data(), n)) << precision_name(prec) << " weights " << i;
      EXPECT_TRUE(same_bits(resumed.master(i), full.master(i), n)) << precision_name(prec) << " master " << i;
      EXPECT_TRUE(same_bits(resumed.exp_avg(i), full.exp_avg(i), n)) << precision_name(prec) << " m " << i;
      EXPECT_TRUE(same_bits(resumed.exp_avg_sq(i), full.exp_avg_sq(i), n)) << precision_name(prec) << " v " << i;
    }
  }
}

// Large enough for several chunks and the parallel path: 1 thread and 4 threads give the same
// bits for the update and for the gradient norm.
TEST(OptimAdamW, ResultsDoNotDependOnThreadCount) {
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> weights;
  std::vector<double> norms;
  for (int threads : {1, 4}) {
    omp_set_num_threads(threads);
    OptimConfig c;
    c.precision = Precision::kBf16;
    Params p;
    p.add("model.layers.0.mlp.down_proj.weight", test::randn(300001, 7, "w"));
    p.add("model.norm.weight", test::randn(70000, 7, "n"));
    AdamW opt(c, p.refs());
    for (int k = 0; k < 3; ++k) {
      p.set_grad(0, test::randn(p.w[0].size(), 100 + k, "g0"));
      p.set_grad(1, test::randn(p.w[1].size(), 100 + k, "g1"));
      norms.push_back(global_grad_norm(p.refs()));
      opt.step(1e-3);
    }
    weights.push_back(p.w[0]);
    weights.push_back(std::vector<float>(opt.master(1), opt.master(1) + p.w[1].size()));
  }
  omp_set_num_threads(saved);
  EXPECT_TRUE(same_bits(weights[0].data(), weights[2].data(), weights[0].size()));
  EXPECT_TRUE(same_bits(weights[1].data(), weights[3].data(), weights[1].size()));
  for (int k = 0; k < 3; ++k) EXPECT_EQ(norms[k], norms[3 + k]) << "step " << k;
}

TEST(OptimAdamW, RejectsDuplicateNamesAndBadLr) {
  Params p;
  p.add("a.weight", {1, 2});
  p.add("a.weight", {3});
  MOEKIT_EXPECT_ERROR_HAS((void)AdamW(OptimConfig(), p.refs()), "a.weight", "twice");
  Params q;
  q.add("b.weight", {1, 2});
  AdamW opt(OptimConfig(), q.refs());
  MOEKIT_EXPECT_ERROR_HAS(opt.step(std::nan("")), "learning rate");
}

// ---- mixed precision -----------------------------------------------------------------------

// With bf16 the masters follow exactly the fp32 run (same grads, same bf16-valued start), and the
// model's weights are the masters rounded to bf16 after every step.
TEST(OptimMixedPrecision, Bf16MastersEqualTheFp32Run) {
  std::vector<float> init = test::randn(1000, 3, "w", 0.5f);
  for (float& x : init) x = bf16_round(x);
  OptimConfig c32, c16;
  c16.precision = Precision::kBf16;
  Params p32, p16;
  p32.add("model.layers.0.mlp.up_proj.weight", init);
  p16.add("model.layers.0.mlp.up_proj.weight", init);
  AdamW o32(c32, p32.refs()), o16(c16, p16.refs());
  EXPECT_NE(o16.master(0), p16.w[0].data());
  for (int k = 0; k < 6; ++k) {
    p32.set_grad(0, test::randn(1000, 50 + k, "g"));
    p16.set_grad(0, p32.g[0]);
    o32.step(1e-3 * (k + 1));
    o16.step(1e-3 * (k + 1));
    ASSERT_TRUE(same_bits(o16.master(0), p32.w[0].data(), 1000)) << "step " << k;
    ASSERT_TRUE(same_bits(o16.exp_avg(0), o32.exp_avg(0), 1000)) << "step " << k;
    ASSERT_TRUE(same_bits(o16.exp_avg_sq(0), o32.exp_avg_sq(0), 1000)) << "step " << k;
    int differ = 0;
    for (int j = 0; j < 1000; ++j) {
      uint32_t bits;
      std::memcpy(&bits, &p16.w[0][j], 4);
      ASSERT_EQ(bits & 0xffffu, 0u) << "model weight not bf16-representable at " << j;
      ASSERT_EQ(p16.w[0][j], bf16_round(o16.master(0)[j])) << j;
      differ += p16.w[0][j] != o16.master(0)[j];
    }
    EXPECT_GT(differ, 900) << "the masters carry more precision than bf16";
  }
}

// The branch-free rounding the update loop uses gives the bits of core/half.h's conversion for
// every sign and exponent, ties, values that round to infinity, denormals and NaN payloads.
TEST(OptimMixedPrecision, VectorisableBf16RoundingMatchesHalfH) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7f7fffffu, 0x7f7f8000u,
                                0x7f7f7fffu, 0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x00000001u, 0x00008000u,
                                0x7f800001u, 0x7fc00000u, 0xffffffffu, 0x7f80ffffu, 0xff810000u};
  for (uint64_t u = 0; u <= 0xffffffffull; u += 0x10001ull * 7) bits.push_back(static_cast<uint32_t>(u));
  for (uint32_t u : bits) {
    const float x = bits_f32(u);
    ASSERT_EQ(f32_bits(round_to_compute<1>(x)), f32_bits(bf16_to_f32(f32_to_bf16(x)))) << std::hex << u;
  }
}

// Construction keeps full-precision weights in the master and rounds the model's copy.
TEST(OptimMixedPrecision, ConstructionRoundsModelWeightsKeepsMasters) {
  const std::vector<float> init = {1.0f + 1e-4f, -3.14159265f, 0.1f, 65519.f, 1e-3f};
  for (Precision prec : {Precision::kBf16, Precision::kFp16}) {
    OptimConfig c;
    c.precision = prec;
    Params p;
    p.add("x.weight", init);
    AdamW opt(c, p.refs());
    for (size_t j = 0; j < init.size(); ++j) {
      EXPECT_EQ(opt.master(0)[j], init[j]);
      const float want = prec == Precision::kBf16 ? bf16_round(init[j]) : f16_to_f32(f32_to_f16(init[j]));
      EXPECT_EQ(p.w[0][j], want) << precision_name(prec) << " " << j;
    }
  }
  // Spot values: bf16 has 8 significant bits, fp16 11.
  EXPECT_EQ(bf16_round(1.0f + 1e-4f), 1.0f);
  EXPECT_EQ(f16_to_f32(f32_to_f16(-3.14159265f)), -3.140625f);
}

// Updates smaller than half a bf16 ulp (2^-8 just below 1.0) do not move the model weight but
// accumulate in the master until the sum crosses a rounding boundary.
TEST(OptimMixedPrecision, SubUlpUpdatesAccumulateInMaster) {
  OptimConfig c;
  c.precision = Precision::kBf16;
  c.weight_decay = 0;
  Params p;
  p.add("x.weight", {1.0f});
  AdamW opt(c, p.refs());
  // A constant gradient gives mhat / sqrt(vhat) = 1 (up to eps), so each step moves the master
  // by lr = 1e-4, 1/39 of the bf16 spacing below 1.0 (2^-8 = 0.0039).
  for (int k = 0; k < 10; ++k) {
    p.g[0][0] = 1.0f;
    opt.step(1e-4);
  }
  EXPECT_NEAR(opt.master(0)[0], 1.0 - 10e-4, 1e-6);
  EXPECT_EQ(p.w[0][0], 1.0f) << "0.999 still rounds to 1.0 in bf16";
  for (int k = 0; k < 20; ++k) {
    p.g[0][0] = 1.0f;
    opt.step(1e-4);
  }
  EXPECT_NEAR(opt.master(0)[0], 1.0 - 30e-4, 1e-6);
  EXPECT_EQ(p.w[0][0], 0.99609375f) << "0.997 rounds to 1 - 2^-8";
}

// ---- schedules -----------------------------------------------------------------------------

// Expected values are written out by hand from the formulas in docs/TRAINING.md.
TEST(OptimSchedule, WarmupThenCosine) {
  OptimConfig c;
  c.lr = 1e-3;
  c.min_lr = 1e-4;
  c.warmup_steps = 10;
  c.schedule = Schedule::kCosine;
  const int64_t total = 110;  // cosine over the 100 steps after warmup
  EXPECT_DOUBLE_EQ(lr_at(c, 0, total), 1e-4);   // 1e-3 * 1/10
  EXPECT_DOUBLE_EQ(lr_at(c, 4, total), 5e-4);   // 1e-3 * 5/10
  EXPECT_DOUBLE_EQ(lr_at(c, 9, total), 1e-3);   // end of warmup
  EXPECT_DOUBLE_EQ(lr_at(c, 10, total), 1e-3);  // cosine at t = 0
  EXPECT_NEAR(lr_at(c, 35, total), 8.681980515339464e-4, 1e-15);  // t = 1/4: 1e-4 + 9e-4 * (1 + sqrt(1/2)) / 2
  EXPECT_NEAR(lr_at(c, 60, total), 5.5e-4, 1e-15);                // t = 1/2
  EXPECT_NEAR(lr_at(c, 85, total), 2.318019484660536e-4, 1e-15);  // t = 3/4: 1e-4 + 9e-4 * (1 - sqrt(1/2)) / 2
  EXPECT_NEAR(lr_at(c, 109, total), 1e-4 + 4.5e-4 * (1 + std::cos(0.99 * 3.141592653589793)), 1e-15);  // t = 99/100
  EXPECT_DOUBLE_EQ(lr_at(c, 110, total), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 500, total), 1e-4);
  c.decay_steps = 50;  // cosine over 50 steps, then the floor
  EXPECT_NEAR(lr_at(c, 35, total), 5.5e-4, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(c, 60, total), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 100, total), 1e-4);
  c.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at(c, 0, total), 1e-3);
}

TEST(OptimSchedule, WarmupStableDecay) {
  OptimConfig c;
  c.lr = 1e-3;
  c.min_lr = 0;
  c.warmup_steps = 5;
  c.schedule = Schedule::kWsd;
  c.wsd_decay_fraction = 0.2;  // 100 steps: decay over steps 80..100
  EXPECT_DOUBLE_EQ(lr_at(c, 2, 100), 6e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 5, 100), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(c, 79, 100), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(c, 80, 100), 1e-3);
  EXPECT_NEAR(lr_at(c, 90, 100), 5e-4, 1e-18);
  EXPECT_NEAR(lr_at(c, 95, 100), 2.5e-4, 1e-18);
  EXPECT_NEAR(lr_at(c, 99, 100), 5e-5, 1e-18);
  EXPECT_DOUBLE_EQ(lr_at(c, 100, 100), 0);
  c.min_lr = 2e-4;
  EXPECT_NEAR(lr_at(c, 90, 100), 6e-4, 1e-18);  // halfway from 1e-3 to 2e-4
  c.wsd_decay_fraction = 0.25;                  // 10 steps: round(2.5) = 3 decay steps, from 7
  c.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at(c, 6, 10), 1e-3);
  EXPECT_NEAR(lr_at(c, 8, 10), 1e-3 - 8e-4 / 3, 1e-18);
  c.wsd_decay_fraction = 0;  // no decay phase
  EXPECT_DOUBLE_EQ(lr_at(c, 9, 10), 1e-3);
}

TEST(OptimSchedule, ConstantAndLongWarmup) {
  OptimConfig c;
  c.lr = 2e-3;
  c.schedule = Schedule::kConstant;
  c.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(lr_at(c, 0, 10), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 1, 10), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(c, 3, 10), 2e-3);
  EXPECT_DOUBLE_EQ(lr_at(c, 9, 10), 2e-3);
  EXPECT_DOUBLE_EQ(lr_at(c, 1000, 10), 2e-3);
  // Warmup longer than the run is allowed: the rate rises through the whole run.
  c.schedule = Schedule::kCosine;
  c.warmup_steps = 100;
  EXPECT_DOUBLE_EQ(lr_at(c, 9, 10), 2e-4);
  MOEKIT_EXPECT_ERROR_HAS(lr_at(c, -1, 10), "step");
  MOEKIT_EXPECT_ERROR_HAS(lr_at(c, 0, 0), "total_steps");
}

// ---- gradient norm, clipping, scaling -------------------------------------------------------

double double_norm(const Params& p) {
  double s = 0;
  for (const auto& g : p.g)
    for (float x : g) s += double(x) * x;
  return std::sqrt(s);
}

Params grad_params() {
  Params p;
  p.add("a", std::vector<float>(100000));  // several chunks
  p.add("b", std::vector<float>(7));
  p.add("c", std::vector<float>(33333));
  p.g[0] = test::randn(100000, 9, "ga", 0.01f);
  p.g[1] = test::randn(7, 9, "gb", 30.f);
  p.g[2] = test::randn(33333, 9, "gc", 1e-3f);
  return p;
}

TEST(OptimClip, GlobalNormMatchesDoubleLoop) {
  Params p = grad_params();
  const double ref = double_norm(p);
  EXPECT_NEAR(global_grad_norm(p.refs()), ref, 1e-13 * ref);
  EXPECT_NEAR(grad_sq_sum(p.refs()), ref * ref, 1e-13 * ref * ref);
  Params empty;
  EXPECT_EQ(global_grad_norm(empty.refs()), 0.0);
}

TEST(OptimClip, ClipsToMaxNormLikeTorch) {
  Params p = grad_params();
  const Params before = p;
  const double ref = double_norm(p);
  const double max_norm = ref / 4;
  const double norm = clip_grads(p.refs(), max_norm);
  EXPECT_NEAR(norm, ref, 1e-13 * ref) << "returns the norm before clipping";
  const float coef = static_cast<float>(max_norm / (norm + 1e-6));
  for (size_t i = 0; i < p.g.size(); ++i)
    for (size_t j = 0; j < p.g[i].size(); ++j) ASSERT_EQ(p.g[i][j], before.g[i][j] * coef) << i << " " << j;
  EXPECT_NEAR(double_norm(p), max_norm, 1e-6 * max_norm);
  // Below the threshold, or with clipping off, the gradients are untouched.
  Params q = grad_params();
  clip_grads(q.refs(), ref * 2);
  clip_grads(q.refs(), 0.0);
  clip_grads(q.refs(), -1.0);
  for (size_t i = 0; i < q.g.size(); ++i) EXPECT_TRUE(same_bits(q.g[i].data(), before.g[i].data(), q.g[i].size()));
  EXPECT_EQ(clip_coefficient(10.0, 1.0), 1.0 / (10.0 + 1e-6));
  EXPECT_EQ(clip_coefficient(0.5, 1.0), 1.0);
  EXPECT_EQ(clip_coefficient(std::nan(""), 1.0), 1.0);
}

TEST(OptimClip, NonFiniteGradientsPropagate) {
  const float inf = std::numeric_limits<float>::infinity();
  Params p = grad_params();
  p.g[2][123] = inf;
  EXPECT_EQ(global_grad_norm(p.refs()), std::numeric_limits<double>::infinity());
  p.g[0][99999] = std::nanf("");
  EXPECT_TRUE(std::isnan(global_grad_norm(p.refs())));
  Params q = grad_params();
  q.g[1][0] = -inf;
  EXPECT_TRUE(std::isinf(global_grad_norm(q.refs())));
  q.g[1][1] = std::nanf("");
  const Params before = q;
  EXPECT_TRUE(std::isnan(clip_grads(q.refs(), 1e-3))) << "a NaN norm is returned, not clipped away";
  for (size_t i = 0; i < q.g.size(); ++i)
    EXPECT_EQ(std::memcmp(q.g[i].data(), before.g[i].data(), q.g[i].size() * 4), 0) << "grads untouched";
  // A finite gradient whose square overflows f32 is still finite in the double sum.
  Params big;
  big.add("x", {0, 0});
  big.g[0] = {3e30f, 4e30f};
  EXPECT_NEAR(global_grad_norm(big.refs()), 5e30, 5e30 * 1e-7);
}

TEST(OptimClip, ScaleGradsMultipliesEveryElement) {
  Params p = grad_params();
  const Params before = p;
  scale_grads(p.refs(), 1.0f / 1024);
  for (size_t i = 0; i < p.g.size(); ++i)
    for (size_t j = 0; j < p.g[i].size(); ++j) ASSERT_EQ(p.g[i][j], before.g[i][j] * (1.0f / 1024));
}

// ---- loss scaler and NaN policy ------------------------------------------------------------

TEST(OptimLossScaler, BackoffGrowthAndFloor) {
  OptimConfig c;
  c.loss_scale_init = 1024;
  c.loss_scale_growth = 2;
  c.loss_scale_backoff = 0.25;
  c.loss_scale_window = 3;
  c.loss_scale_min = 32;
  LossScaler s(c);
  EXPECT_EQ(s.scale(), 1024);
  EXPECT_TRUE(s.update(true));  // overflow: skip, back off
  EXPECT_EQ(s.scale(), 256);
  EXPECT_FALSE(s.update(false));
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 256);
  EXPECT_EQ(s.good_steps(), 2);
  EXPECT_FALSE(s.update(false));  // third clean step in a row: grow
  EXPECT_EQ(s.scale(), 512);
  EXPECT_EQ(s.good_steps(), 0);
  EXPECT_FALSE(s.update(false));
  EXPECT_FALSE(s.update(false));
  EXPECT_TRUE(s.update(true));  // an overflow resets the window
  EXPECT_EQ(s.scale(), 128);
  EXPECT_EQ(s.good_steps(), 0);
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 32);
  EXPECT_TRUE(s.update(true));  // clamped at loss_scale_min
  EXPECT_EQ(s.scale(), 32);
  s.restore(4096, 2);
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 8192);
}

TEST(OptimNanGuard, SkipsUpToTheLimitThenStops) {
  OptimConfig c;
  c.max_skipped_steps = 2;
  NanGuard g(c);
  EXPECT_EQ(g.check(true), StepAction::kApply);
  EXPECT_EQ(g.check(false), StepAction::kSkip);
  EXPECT_EQ(g.check(false), StepAction::kSkip);
  EXPECT_EQ(g.check(true), StepAction::kApply);  // a finite step resets the run of skips
  EXPECT_EQ(g.skipped_in_a_row(), 0);
  EXPECT_EQ(g.check(false), StepAction::kSkip);
  EXPECT_EQ(g.check(false), StepAction::kSkip);
  EXPECT_EQ(g.check(false), StepAction::kStop);  // a third in a row
  EXPECT_EQ(g.skipped_total(), 5);
  c.nan_policy = NanPolicy::kStop;
  NanGuard stop(c);
  EXPECT_EQ(stop.check(true), StepAction::kApply);
  EXPECT_EQ(stop.check(false), StepAction::kStop);
}

// ---- the optim: config ---------------------------------------------------------------------

OptimConfig from_text(const std::string& text) { return optim_config_from_yaml(YAML::Load(text), "run.yaml"); }

// The defaults as docs/TRAINING.md lists them, written as a user would write them. Compared
// through the dump, which carries every key at full precision.
TEST(OptimConfigTest, DefaultsAreTheDocumentedOnes) {
  const OptimConfig documented = from_text(R"(
lr: 3.0e-4
min_lr: 3.0e-5
beta1: 0.9
beta2: 0.95
eps: 1.0e-8
weight_decay: 0.1
no_decay: [bias, norm, embed_tokens]
schedule: cosine
warmup_steps: 0
decay_steps: 0
wsd_decay_fraction: 0.2
clip_grad_norm: 1.0
precision: fp32
loss_scale_init: 65536
loss_scale_growth: 2.0
loss_scale_backoff: 0.5
loss_scale_window: 1000
loss_scale_min: 1.0
nan_policy: skip
max_skipped_steps: 100
max_skipped_fraction: 0.1
)");
  const std::string want = optim_config_to_yaml(documented);
  for (const OptimConfig& c : {OptimConfig(), from_text("{}"), from_text("~"), optim_config_from_yaml(YAML::Node(), "x")}) {
    EXPECT_EQ(optim_config_to_yaml(c), want);
    c.validate();
  }
}

TEST(OptimConfigTest, EveryKeyParsedAndRoundTrips) {
  const OptimConfig c = from_text(R"(
lr: 1.5e-3
min_lr: 1.0e-5
beta1: 0.8
beta2: 0.999
eps: 1.0e-6
weight_decay: 0.05
no_decay: [bias, layernorm]
schedule: wsd
warmup_steps: 200
decay_steps: 3000
wsd_decay_fraction: 0.1
clip_grad_norm: 0.5
precision: fp16
loss_scale_init: 1024
loss_scale_growth: 4
loss_scale_backoff: 0.25
loss_scale_window: 50
loss_scale_min: 2
nan_policy: stop
max_skipped_steps: 7
max_skipped_fraction: 0.25
)");
  EXPECT_EQ(c.lr, 1.5e-3);
  EXPECT_EQ(c.min_lr, 1e-5);
  EXPECT_EQ(c.beta1, 0.8);
  EXPECT_EQ(c.beta2, 0.999);
  EXPECT_EQ(c.eps, 1e-6);
  EXPECT_EQ(c.weight_decay, 0.05);
  EXPECT_EQ(c.no_decay, (std::vector<std::string>{"bias", "layernorm"}));
  EXPECT_EQ(c.schedule, Schedule::kWsd);
  EXPECT_EQ(c.warmup_steps, 200);
  EXPECT_EQ(c.decay_steps, 3000);
  EXPECT_EQ(c.wsd_decay_fraction, 0.1);
  EXPECT_EQ(c.clip_grad_norm, 0.5);
  EXPECT_EQ(c.precision, Precision::kFp16);
  EXPECT_EQ(c.loss_scale_init, 1024);
  EXPECT_EQ(c.loss_scale_growth, 4);
  EXPECT_EQ(c.loss_scale_backoff, 0.25);
  EXPECT_EQ(c.loss_scale_window, 50);
  EXPECT_EQ(c.loss_scale_min, 2);
  EXPECT_EQ(c.nan_policy, NanPolicy::kStop);
  EXPECT_EQ(c.max_skipped_steps, 7);
  EXPECT_EQ(c.max_skipped_fraction, 0.25);
  // The dump lists every key with its value and parses back to the same config (compared through
  // a second dump); so does the default config.
  const std::string text = optim_config_to_yaml(c);
  const YAML::Node dumped = YAML::Load(text);
  EXPECT_EQ(dumped.size(), 21u) << text;
  EXPECT_EQ(dumped["lr"].as<double>(), 1.5e-3);
  EXPECT_EQ(dumped["schedule"].as<std::string>(), "wsd");
  EXPECT_EQ(dumped["precision"].as<std::string>(), "fp16");
  EXPECT_EQ(dumped["nan_policy"].as<std::string>(), "stop");
  EXPECT_EQ(dumped["no_decay"].size(), 2u);
  EXPECT_EQ(dumped["max_skipped_steps"].as<int64_t>(), 7);
  EXPECT_EQ(optim_config_to_yaml(optim_config_from_yaml(dumped, "resolved")), text);
  const std::string defaults = optim_config_to_yaml(OptimConfig());
  EXPECT_EQ(optim_config_to_yaml(from_text(defaults)), defaults);
  EXPECT_EQ(from_text(defaults).lr, 3e-4);
  for (const char* p : {"bf16", "fp32"}) EXPECT_EQ(precision_name(from_text(std::string("precision: ") + p).precision), std::string(p));
  EXPECT_EQ(from_text("schedule: constant").schedule, Schedule::kConstant);
  EXPECT_EQ(from_text("schedule: cosine").schedule, Schedule::kCosine);
}

TEST(OptimConfigTest, UnknownKeysAndBadTypesNameTheKeyAndFile) {
  MOEKIT_EXPECT_ERROR_HAS(from_text("lr: 1e-3\nbetas: [0.9, 0.95]"), "run.yaml", "unknown key", "'optim.betas'");
  MOEKIT_EXPECT_ERROR_HAS(from_text("lr: fast"), "run.yaml", "'optim.lr'", "fast");
  MOEKIT_EXPECT_ERROR_HAS(from_text("warmup_steps: 1.5"), "run.yaml", "'optim.warmup_steps'");
  MOEKIT_EXPECT_ERROR_HAS(from_text("no_decay: bias"), "run.yaml", "'optim.no_decay'");
  MOEKIT_EXPECT_ERROR_HAS(from_text("schedule: linear"), "run.yaml", "'optim.schedule'", "linear", "cosine, wsd, constant");
  MOEKIT_EXPECT_ERROR_HAS(from_text("precision: fp8"), "run.yaml", "'optim.precision'", "fp32, bf16, fp16");
  MOEKIT_EXPECT_ERROR_HAS(from_text("nan_policy: ignore"), "run.yaml", "'optim.nan_policy'", "skip, stop");
  MOEKIT_EXPECT_ERROR_HAS(from_text("[1, 2]"), "run.yaml", "'optim' must be a mapping");
}

TEST(OptimConfigTest, InvalidValuesNameKeyValueAndFile) {
  MOEKIT_EXPECT_ERROR_HAS(from_text("lr: -1e-3"), "run.yaml", "optim.lr must be > 0", "-0.001");
  MOEKIT_EXPECT_ERROR_HAS(from_text("lr: 0"), "optim.lr must be > 0");
  MOEKIT_EXPECT_ERROR_HAS(from_text("lr: .nan"), "optim.lr");
  MOEKIT_EXPECT_ERROR_HAS(from_text("lr: 1e-4\nmin_lr: 1e-3"), "optim.min_lr", "0.001");
  MOEKIT_EXPECT_ERROR_HAS(from_text("min_lr: -1"), "optim.min_lr");
  MOEKIT_EXPECT_ERROR_HAS(from_text("beta1: 1.0"), "run.yaml", "optim.beta1 must be in [0, 1)", "got 1");
  MOEKIT_EXPECT_ERROR_HAS(from_text("beta2: 1.5"), "optim.beta2", "1.5");
  MOEKIT_EXPECT_ERROR_HAS(from_text("beta2: -0.1"), "optim.beta2");
  MOEKIT_EXPECT_ERROR_HAS(from_text("eps: 0"), "optim.eps must be > 0");
  MOEKIT_EXPECT_ERROR_HAS(from_text("weight_decay: -0.1"), "optim.weight_decay");
  MOEKIT_EXPECT_ERROR_HAS(from_text("no_decay: [bias, '']"), "optim.no_decay", "empty");
  MOEKIT_EXPECT_ERROR_HAS(from_text("warmup_steps: -5"), "optim.warmup_steps", "-5");
  MOEKIT_EXPECT_ERROR_HAS(from_text("decay_steps: -1"), "optim.decay_steps");
  MOEKIT_EXPECT_ERROR_HAS(from_text("wsd_decay_fraction: 1.2"), "optim.wsd_decay_fraction", "1.2");
  MOEKIT_EXPECT_ERROR_HAS(from_text("clip_grad_norm: .inf"), "optim.clip_grad_norm");
  MOEKIT_EXPECT_ERROR_HAS(from_text("loss_scale_init: 0"), "optim.loss_scale_init");
  MOEKIT_EXPECT_ERROR_HAS(from_text("loss_scale_growth: 0.5"), "optim.loss_scale_growth");
  MOEKIT_EXPECT_ERROR_HAS(from_text("loss_scale_backoff: 1"), "optim.loss_scale_backoff");
  MOEKIT_EXPECT_ERROR_HAS(from_text("loss_scale_window: 0"), "optim.loss_scale_window");
  MOEKIT_EXPECT_ERROR_HAS(from_text("loss_scale_min: 100000"), "optim.loss_scale_min", "65536");
  MOEKIT_EXPECT_ERROR_HAS(from_text("max_skipped_steps: -1"), "optim.max_skipped_steps");
  MOEKIT_EXPECT_ERROR_HAS(from_text("max_skipped_fraction: 1.5"), "optim.max_skipped_fraction", "1.5");
  MOEKIT_EXPECT_ERROR_HAS(from_text("max_skipped_fraction: -0.1"), "optim.max_skipped_fraction");
  MOEKIT_EXPECT_ERROR_HAS(from_text("lr: 1e400"), "run.yaml", "'optim.lr'", "1e400");
  // Accepted edge values.
  EXPECT_EQ(from_text("clip_grad_norm: 0").clip_grad_norm, 0.0);
  EXPECT_EQ(from_text("beta1: 0").beta1, 0.0);
  EXPECT_TRUE(from_text("no_decay: []").no_decay.empty());
  EXPECT_EQ(from_text("warmup_steps: 1000000").warmup_steps, 1000000);
  // AdamW validates the config it is given.
  OptimConfig bad;
  bad.beta2 = 1.0;
  Params p;
  p.add("w", {1});
  MOEKIT_EXPECT_ERROR_HAS((void)AdamW(bad, p.refs()), "optim.beta2");
}

// The NaN policy's state checks (optim/finite.h): a non-finite weight, master or moment is named
// with its tensor and element; the skipped-step bound compares the fraction with the key.
TEST(OptimFinite, NonFiniteStateIsNamed) {
  for (Precision prec : {Precision::kFp32, Precision::kBf16}) {
    OptimConfig c;
    c.precision = prec;
    Params p;
    p.add("a", std::vector<float>(4, 0.1f));
    p.add("b", std::vector<float>(15, 0.2f));
    AdamW opt(c, p.refs());
    check_finite_weights(p.refs(), "step 1");
    check_finite_state(opt, "step 1");
    opt.exp_avg_sq(1)[7] = std::numeric_limits<float>::infinity();
    MOEKIT_EXPECT_ERROR_HAS(check_finite_state(opt, "step 3"), "step 3", "exp_avg_sq of tensor 'b'", "element 7 of 15");
    opt.exp_avg_sq(1)[7] = 0;
    opt.exp_avg(0)[2] = std::numeric_limits<float>::quiet_NaN();
    opt.exp_avg(1)[0] = std::numeric_limits<float>::quiet_NaN();  // the first in order is reported
    MOEKIT_EXPECT_ERROR_HAS(check_finite_state(opt, "step 4"), "exp_avg of tensor 'a'", "element 2 of 4");
    opt.exp_avg(0)[2] = opt.exp_avg(1)[0] = 0;
    if (prec == Precision::kBf16) {
      opt.master(0)[1] = -std::numeric_limits<float>::infinity();
      MOEKIT_EXPECT_ERROR_HAS(check_finite_state(opt, "step 5"), "master weights of tensor 'a'", "element 1");
      opt.master(0)[1] = 0;
    }
    p.refs()[1].w[14] = std::numeric_limits<float>::quiet_NaN();
    MOEKIT_EXPECT_ERROR_HAS(check_finite_weights(p.refs(), "init_from x"), "init_from x", "weights of tensor 'b'",
                            "element 14 of 15");
  }
}

TEST(OptimFinite, SkippedFractionBound) {
  OptimConfig c;  // max_skipped_fraction 0.1
  check_skipped_fraction(c, 0, 0);
  check_skipped_fraction(c, 1, 10);
  MOEKIT_EXPECT_ERROR_HAS(check_skipped_fraction(c, 19, 20), "19 of 20 steps (0.95)", "optim.max_skipped_fraction 0.1");
  c.max_skipped_fraction = 1.0;
  check_skipped_fraction(c, 20, 20);
  c.max_skipped_fraction = 0.0;
  MOEKIT_EXPECT_ERROR_HAS(check_skipped_fraction(c, 1, 1000), "1 of 1000 steps");
}

}  // namespace
}  // namespace moekit::optim
