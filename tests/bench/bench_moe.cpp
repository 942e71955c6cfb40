// CPU training-speed benchmark of the bench MoE: times forward(train) + backward of moekit's
// Model on random tokens and reports tokens/s, ms/step, achieved GFLOP/s and the fraction of
// the machine's f32 GEMM rate (kernels::matmul_nt on 1024^3, best of 5).
// tests/bench/bench_moe_torch.py is the same measurement for PyTorch eager;
// tests/bench/run_cpu_bench.sh runs both and prints the comparison (docs/PERF.md).
//
// FLOPs per token of forward + backward (the PaLM/Chinchilla convention, Chowdhery et al. 2022
// appendix B): 6 * N_act + 12 * L * S * (heads * head_dim), where N_act is the number of
// GEMM weights one token passes through, embeddings excluded (a gather, no FLOPs):
//   per layer: q,k,v,o projections   H*qd + 2*H*kvd + qd*H
//              MoE layer:            router E*H + top_k * 3*I_moe*H + shared 3*I_sh*H + gate H
//              dense layer:          3*I*H
//   plus lm_head V*H (a GEMM like the others).
// Biases, norms and elementwise work are not counted. The attention term counts the full
// S x S score and value products (causal masking is not discounted), as both moekit and the
// eager PyTorch reference compute them in full.
#include <CLI/CLI.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "core/check.h"
#include "kernels/matmul.h"
#include "model/model.h"

namespace {

using Clock = std::chrono::steady_clock;
using moekit::config::ModelConfig;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Default model config: relative to the working directory, else to the source tree this file
// was compiled from (CMake passes absolute source paths).
std::string default_model_path() {
  const std::string rel = "configs/models/bench-moe.yaml";
  if (std::filesystem::exists(rel)) return rel;
  const auto src = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / rel;
  return std::filesystem::exists(src) ? src.string() : rel;
}

// GEMM weights one token passes through (see the header comment).
int64_t activated_params(const ModelConfig& c) {
  const int64_t H = c.hidden_size, d = c.head_size();
  const int64_t qd = c.num_attention_heads * d, kvd = c.num_key_value_heads * d;
  int64_t n = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    n += H * qd + 2 * H * kvd + qd * H;
    if (c.is_sparse_layer(l)) {
      n += c.num_experts * H + c.num_experts_per_tok * 3 * c.moe_intermediate_size * H;
      if (c.shared_expert_intermediate_size > 0) n += 3 * c.shared_expert_intermediate_size * H + H;
    } else {
      n += 3 * c.intermediate_size * H;
    }
  }
  return n + c.vocab_size * H;
}

double flops_per_token(const ModelConfig& c, int64_t seq) {
  const double attn = 12.0 * c.num_hidden_layers * seq * c.num_attention_heads * c.head_size();
  return 6.0 * static_cast<double>(activated_params(c)) + attn;
}

// f32 GEMM rate of kernels::matmul_nt (the BLAS path) on n x n x n, best of `reps`, GFLOP/s.
double gemm_gflops(int64_t n, int reps) {
  std::vector<float> a(n * n), b(n * n), c(n * n);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& v : a) v = u(rng);
  for (auto& v : b) v = u(rng);
  moekit::kernels::matmul_nt(c.data(), a.data(), b.data(), n, n, n);  // warm-up (threads, pages)
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    moekit::kernels::matmul_nt(c.data(), a.data(), b.data(), n, n, n);
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * n * n * n / best / 1e9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moekit CPU training-speed benchmark (forward + backward of the bench MoE)"};
  std::string model_path = default_model_path();
  int64_t batch = 4, seq = 256;
  int steps = 10, warmup = 2;
  bool json = false;
  app.add_option("--model", model_path, "model config (YAML or HF config.json)");
  app.add_option("--batch", batch, "sequences per step")->check(CLI::PositiveNumber);
  app.add_option("--seq", seq, "tokens per sequence")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_flag("--json", json, "print one JSON line instead of the human-readable report");
  CLI11_PARSE(app, argc, argv);

  try {
    const ModelConfig cfg = moekit::config::load_model_config(model_path);
    moekit::model::Model model(cfg);
    model.params().init(/*seed=*/1, /*std=*/0.02);

    // Random sequences of S+1 tokens: inputs are the first S, targets the last S.
    const int64_t T = batch * seq, V = cfg.vocab_size;
    std::vector<int64_t> inputs(T), targets(T);
    std::mt19937_64 rng(1234);
    std::uniform_int_distribution<int64_t> tok(0, V - 1);
    for (int64_t b = 0; b < batch; ++b) {
      int64_t prev = tok(rng);
      for (int64_t s = 0; s < seq; ++s) {
        const int64_t next = tok(rng);
        inputs[b * seq + s] = prev;
        targets[b * seq + s] = next;
        prev = next;
      }
    }
    moekit::model::LossConfig loss;
    loss.aux = moekit::model::AuxLossForm::kHfPooled;
    loss.aux_coef = 0.001;

    std::vector<double> times;
    double first_loss = 0, first_ce = 0;
    for (int i = 0; i < warmup + steps; ++i) {
      model.params().zero_grad();  // outside the timed region, like the reference's grad reset
      const auto t0 = Clock::now();
      const auto terms = model.forward(inputs.data(), targets.data(), batch, seq, loss, /*train=*/true);
      model.backward();
      const double dt = seconds_since(t0);
      if (i == 0) {
        first_loss = terms.total;
        first_ce = terms.ce;
      }
      if (i >= warmup) times.push_back(dt);
    }
    const double t_med = median(times), t_min = *std::min_element(times.begin(), times.end());
    const double fpt = flops_per_token(cfg, seq);
    const double tok_s = static_cast<double>(T) / t_med;
    const double gflops = fpt * tok_s / 1e9;
    const double peak = gemm_gflops(1024, 5);
    const int threads = omp_get_max_threads();

    std::string step_list;
    for (size_t i = 0; i < times.size(); ++i) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%s%.1f", i ? ", " : "", times[i] * 1e3);
      step_list += buf;
    }
    if (json) {
      std::printf(
          "{\"impl\": \"moekit\", \"model\": \"%s\", \"batch\": %lld, \"seq\": %lld, \"steps\": %d, "
          "\"warmup\": %d, \"threads\": %d, \"tokens_per_step\": %lld, \"activated_params\": %lld, "
          "\"total_params\": %lld, \"flops_per_token\": %.6g, \"ms_per_step\": %.3f, \"ms_per_step_min\": %.3f, "
          "\"tokens_per_s\": %.2f, \"gflops\": %.3f, \"gemm_gflops\": %.3f, \"frac_of_gemm_peak\": %.5f, "
          "\"first_loss\": %.6f, \"first_ce\": %.6f, \"step_ms\": [%s]}\n",
          model_path.c_str(), static_cast<long long>(batch), static_cast<long long>(seq), steps, warmup, threads,
          static_cast<long long>(T), static_cast<long long>(activated_params(cfg)),
          static_cast<long long>(model.params().numel()), fpt, t_med * 1e3, t_min * 1e3, tok_s, gflops, peak,
          gflops / peak, first_loss, first_ce, step_list.c_str());
    } else {
      std::printf("moekit CPU bench: %s, batch %lld x seq %lld, %d timed steps (+%d warm-up), %d threads\n",
                  model_path.c_str(), static_cast<long long>(batch), static_cast<long long>(seq), steps, warmup,
                  threads);
      std::printf("  params: %lld total, %lld activated per token (GEMM weights, no embeddings)\n",
                  static_cast<long long>(model.params().numel()), static_cast<long long>(activated_params(cfg)));
      std::printf("  first step loss %.4f (ce %.4f)\n", first_loss, first_ce);
      std::printf("  step: %.1f ms median, %.1f ms min (all: %s)\n", t_med * 1e3, t_min * 1e3, step_list.c_str());
      std::printf("  tokens/s: %.1f (median step)\n", tok_s);
      std::printf("  model FLOPs/token (fwd+bwd): %.4g -> %.2f GFLOP/s\n", fpt, gflops);
      std::printf("  f32 GEMM 1024^3 (matmul_nt, best of 5): %.2f GFLOP/s -> %.1f%% of measured GEMM peak\n", peak,
                  100.0 * gflops / peak);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_moe: %s\n", e.what());
    return 1;
  }
  return 0;
}
