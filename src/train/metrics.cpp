#include "train/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "kernels/matmul.h"

namespace moekit::train {

FlopCount count_flops(const config::ModelConfig& c, int64_t seq) {
  FlopCount f;
  const double H = c.hidden_size, V = c.vocab_size, d = c.head_size();
  const double qd = c.num_attention_heads * d, kvd = c.num_key_value_heads * d;
  const double attn_matmul = H * qd + 2 * H * kvd + qd * H;  // q, k, v, o
  const double attn_other = (c.qkv_bias ? qd + 2 * kvd : 0) + 2 * H;  // biases, two norms
  const double embeddings = V * H * (c.tie_word_embeddings ? 1 : 2);  // input embedding + lm_head
  double total = embeddings + H, active_ne = H, matmul = V * H;  // final norm; the lm_head is a GEMM even when tied
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    double layer_total = attn_matmul + attn_other, layer_active = layer_total, layer_matmul = attn_matmul;
    if (c.is_sparse_layer(l)) {
      const double expert = 3 * H * c.moe_intermediate_size, shared = 3 * H * c.shared_expert_intermediate_size;
      const double router = H * c.num_experts;
      const double gate = c.shared_expert_intermediate_size > 0 && c.shared_expert_gate ? H : 0;
      f.params_expert += c.num_experts * expert;
      layer_total += c.num_experts * expert + shared + router + gate;
      layer_active += c.num_experts_per_tok * expert + shared + router + gate;
      layer_matmul += c.num_experts_per_tok * expert + shared + router + gate;
    } else {
      const double mlp = 3 * H * c.intermediate_size;
      layer_total += mlp;
      layer_active += mlp;
      layer_matmul += mlp;
    }
    total += layer_total;
    active_ne += layer_active;
    matmul += layer_matmul;
  }
  f.params_total = total;
  f.params_embedding = embeddings;
  f.params_active_non_embedding = active_ne;
  f.params_active = active_ne + embeddings;
  f.params_matmul_active = matmul;
  f.matmul_flops_per_token = 6 * matmul;
  f.attention_flops_per_token = 6.0 * 2.0 * c.num_hidden_layers * static_cast<double>(seq) * qd;
  return f;
}

double measure_gemm_flops(int64_t n, int repeats) {
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  kernels::matmul_nt(c.data(), a.data(), b.data(), n, n, n);  // warm up threads and caches
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    kernels::matmul_nt(c.data(), a.data(), b.data(), n, n, n);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * n * n * n / best;
}

double ExpertLoad::max_over_mean() const {
  if (counts.empty()) return 0;
  const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  if (total == 0) return 0;
  return *std::max_element(counts.begin(), counts.end()) / (total / counts.size());
}

int64_t ExpertLoad::dead() const { return std::count(counts.begin(), counts.end(), 0); }

std::vector<double> ExpertLoad::fractions() const {
  const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  std::vector<double> f(counts.size());
  for (size_t e = 0; e < counts.size(); ++e) f[e] = total > 0 ? counts[e] / total : 0.0;
  return f;
}

JsonlWriter::JsonlWriter(const std::string& path, bool append) : path_(path) {
  f_ = std::fopen(path.c_str(), append ? "ab" : "wb");
  MOEKIT_CHECK(f_ != nullptr, "cannot open ", path, " for writing");
}

JsonlWriter::~JsonlWriter() {
  if (f_) std::fclose(f_);
}

void JsonlWriter::write(const std::string& line) {
  MOEKIT_CHECK(std::fputs(line.c_str(), f_) >= 0 && std::fputc('\n', f_) != EOF, "write failed: ", path_);
  std::fflush(f_);
}

void JsonlWriter::sync() {
  MOEKIT_CHECK(std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0, "sync failed: ", path_);
}

std::string format_duration(double s) {
  char buf[32];
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

}  // namespace moekit::train
