// The GPU model against the CPU model on the same weights and tokens: losses, logits and every
// parameter gradient, by HF name, for dense and MoE variants (shared expert gated or not,
// norm_topk_prob, a dense layer among sparse ones, tied embeddings); then one whole training
// step (forward, backward, AdamW on the device) against the CPU step. f32 mode must agree to f32
// tolerance (the CPU model matches transformers to 1e-5 / 1e-4, tests/unit/test_model_parity);
// bf16 mode to bf16 tolerance. Skips without CUDA or without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "core/rng.h"
#include "gpu_test_util.h"
#include "model/model.h"
#include "optim/adamw_math.h"
#include "optim/optim.h"

#ifdef MOEKIT_WITH_CUDA
#include "model/gpu_model.h"
#include "optim/adamw_cuda.h"
#endif

namespace moekit {
namespace {

#ifdef MOEKIT_WITH_CUDA
config::ModelConfig load(const std::string& name) {
  return config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/" + name + ".yaml");
}

struct Variant {
  std::string name;
  config::ModelConfig cfg;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  v.push_back({"dense GQA", load("tiny-dense")});
  auto tied = load("tiny-dense");
  tied.tie_word_embeddings = true;
  tied.num_key_value_heads = tied.num_attention_heads;
  v.push_back({"dense MHA tied", tied});
  v.push_back({"MoE gated shared", load("tiny-moe")});
  auto norm = load("tiny-moe");
  norm.norm_topk_prob = true;
  norm.mlp_only_layers = {1};
  v.push_back({"MoE norm_topk, dense layer 1", norm});
  auto ungated = load("tiny-moe");
  ungated.shared_expert_gate = false;
  ungated.num_hidden_layers = 2;
  v.push_back({"MoE ungated shared", ungated});
  return v;
}

void tokens(int64_t n, int64_t vocab, std::vector<int64_t>* in, std::vector<int64_t>* tg) {
  CounterRng rng(5, "gpu_model.tokens");
  in->resize(n);
  tg->resize(n);
  for (int64_t i = 0; i < n; ++i) {
    (*in)[i] = static_cast<int64_t>(rng.uniform(2 * i) * vocab) % vocab;
    (*tg)[i] = static_cast<int64_t>(rng.uniform(2 * i + 1) * vocab) % vocab;
  }
  (*tg)[3] = -1;  // an ignored target
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(1e-12, std::fabs(b)); }

void compare(const Variant& v, model::GpuPrecision precision, double loss_tol, double grad_tol) {
  const int64_t B = 2, S = 70;  // longer than 64: several warps' worth of keys per row
  std::vector<int64_t> in, tg;
  tokens(B * S, v.cfg.vocab_size, &in, &tg);
  const model::LossConfig loss{model::AuxLossForm::kHfPooled, 0.01, 0.001};

  model::Model cpu(v.cfg);
  cpu.params().init(11, v.cfg.initializer_range);
  cuda::Context ctx;
  model::GpuModel gpu(v.cfg, cpu.params(), ctx, precision);
  if (precision == model::GpuPrecision::kBf16) {  // both sides compute on bf16-representable weights
    for (int e = 0; e < 2; ++e)
      for (int64_t i = 0; i < cpu.params().numel(e); ++i) {
        float& w = cpu.params().values(e)[i];
        w = bf16_to_f32(f32_to_bf16(w));
      }
  }
  gpu.upload_weights(cpu.params());

  // Evaluation forward: logits.
  const model::LossTerms ce = cpu.forward(in.data(), tg.data(), B, S, loss, false);
  const model::LossTerms ge = gpu.forward(in.data(), tg.data(), B, S, loss, false);
  EXPECT_LT(rel(ge.ce, ce.ce), loss_tol) << v.name;
  EXPECT_LT(test::strict_rel_err(gpu.logits(), cpu.logits()), grad_tol) << v.name << " logits";

  // Training forward + backward: loss terms and every gradient.
  cpu.params().zero_grad();
  gpu.zero_grad();
  const model::LossTerms ct = cpu.forward(in.data(), tg.data(), B, S, loss, true);
  cpu.backward();
  const model::LossTerms gt = gpu.forward(in.data(), tg.data(), B, S, loss, true);
  gpu.backward();
  EXPECT_EQ(gt.targets, ct.targets);
  EXPECT_LT(rel(gt.ce, ct.ce), loss_tol) << v.name;
  EXPECT_LT(rel(gt.total, ct.total), loss_tol) << v.name;
  if (v.cfg.is_moe()) {
    EXPECT_LT(rel(gt.aux_hf, ct.aux_hf), loss_tol) << v.name;
    EXPECT_LT(rel(gt.z_loss, ct.z_loss), loss_tol) << v.name;
  }
  model::ParamStore got;
  model::declare_model_params(v.cfg, &got);
  got.finalize();
  gpu.download_grads(&got);
  for (const auto& s : cpu.params().specs()) {
    model::Param want = cpu.params().get(s.name), have = got.get(s.name);
    const std::vector<float> a(have.g, have.g + s.numel()), b(want.g, want.g + s.numel());
    EXPECT_LT(test::strict_rel_err(a, b), grad_tol) << v.name << ": gradient of " << s.name;
  }
}

TEST(GpuModel, MatchesCpuModelInF32) {
  MOEKIT_REQUIRE_GPU();
  for (const auto& v : variants()) compare(v, model::GpuPrecision::kF32, 1e-5, 1e-4);
}

TEST(GpuModel, MatchesCpuModelInF32WithPlainAttention) {
  MOEKIT_REQUIRE_GPU();
  setenv("MOEKIT_CUDA_ATTENTION", "plain", 1);  // read by each GpuModel at construction
  for (const auto& v : variants()) compare(v, model::GpuPrecision::kF32, 1e-5, 1e-4);
  unsetenv("MOEKIT_CUDA_ATTENTION");
}

TEST(GpuModel, MatchesCpuModelInBf16) {
  MOEKIT_REQUIRE_GPU();
  // bf16 activations: about 3 significant digits per op; gradients compared per tensor against
  // the largest element.
  for (const auto& v : variants()) compare(v, model::GpuPrecision::kBf16, 1e-2, 5e-2);
}

TEST(GpuModel, TrainingStepMatchesCpu) {
  MOEKIT_REQUIRE_GPU();
  const config::ModelConfig cfg = load("tiny-moe");
  const int64_t B = 2, S = 32;
  std::vector<int64_t> in, tg;
  tokens(B * S, cfg.vocab_size, &in, &tg);
  const model::LossConfig loss{model::AuxLossForm::kHfPooled, 0.01, 0.0};
  optim::OptimConfig oc;
  oc.lr = 1e-3;
  model::Model cpu(cfg);
  cpu.params().init(3, cfg.initializer_range);
  cuda::Context ctx;
  model::GpuModel gpu(cfg, cpu.params(), ctx, model::GpuPrecision::kF32);
  gpu.upload_weights(cpu.params());
  // CPU step.
  std::vector<optim::TensorRef> refs;
  for (const auto& s : cpu.params().specs()) {
    model::Param p = cpu.params().get(s.name);
    refs.push_back({s.name, p.w, p.g, s.numel()});
  }
  optim::AdamW adamw(oc, refs);
  cpu.params().zero_grad();
  cpu.forward(in.data(), tg.data(), B, S, loss, true);
  cpu.backward();
  adamw.step(oc.lr);
  // GPU step: the same update per tensor on the device arenas (moments start at zero).
  gpu.zero_grad();
  gpu.forward(in.data(), tg.data(), B, S, loss, true);
  gpu.backward();
  for (int e = 0; e < 2; ++e) {
    cuda::DeviceArray<float> m(std::vector<float>(gpu.numel(e), 0.f)), v(std::vector<float>(gpu.numel(e), 0.f));
    for (const auto& s : cpu.params().specs()) {
      if (s.expert != static_cast<bool>(e)) continue;
      const auto sc = optim::adamw_scalars(oc, oc.lr, 1, optim::applies_weight_decay(oc, s.name));
      optim::adamw_step_cuda(ctx, gpu.weights(e) + s.offset, m.data() + s.offset, v.data() + s.offset,
                             gpu.grads(e) + s.offset, nullptr, s.numel(), sc);
    }
    ctx.synchronize();
  }
  model::ParamStore got;
  model::declare_model_params(cfg, &got);
  got.finalize();
  gpu.download_weights(&got);
  for (const auto& s : cpu.params().specs()) {
    model::Param want = cpu.params().get(s.name), have = got.get(s.name);
    const std::vector<float> a(have.w, have.w + s.numel()), b(want.w, want.w + s.numel());
    // One AdamW step moves each weight by about lr; gradients that agree to 1e-4 give updates
    // that agree far below that.
    EXPECT_LT(test::strict_rel_err(a, b), 1e-5) << "weights of " << s.name << " after one step";
  }
}
#else
TEST(GpuModel, SkipsWithoutCuda) { GTEST_SKIP() << "built without CUDA (MOEKIT_CUDA=OFF)"; }
#endif

}  // namespace
}  // namespace moekit
