// moekit cost: parameters, training FLOPs per token and a per-rank memory plan of a model config,
// optionally against a second (dense baseline) config. A table on stdout; with --json the last
// stdout line is one JSON object. Formulas: docs/COST.md, train/metrics.h, train/memory_plan.h.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "core/check.h"
#include "core/log.h"
#include "train/memory_plan.h"
#include "train/memory_probe.h"
#include "train/metrics.h"

namespace moekit::cli {

namespace {

using nlohmann::json;

constexpr const char* kFormulaHelp =
    "Parameters: total; activated = embeddings + attention + norms + dense MLPs + per MoE layer "
    "(top-k routed experts + shared expert + router + shared gate); activated non-embedding = activated "
    "minus input embedding and lm_head. FLOPs per token = 6 * N_matmul + 12 * L * S * q_dim, N_matmul = "
    "weights of the GEMMs one token passes through (activated non-embedding minus norms and biases, "
    "plus lm_head); the second term is QK^T and PV over the full S x S (causal not halved, PaLM "
    "appendix B). Memory per rank: weights (compute dtype) + fp32 master (bf16/fp16 only) + gradients + "
    "AdamW moments (8 B/param); with --zero1 master and moments are sharded, dense over ep*dp ranks and "
    "experts over dp; activations that one micro-batch keeps for the backward (per layer: x, rmsnorm(x), h, "
    "rmsnorm(h), q/k/v, attention context and logsumexp, MLP gate/up and activation; MoE: router probs, "
    "the T*k dispatched rows, expert outputs, expert gate/up/activation, shared expert), the backward's "
    "transients and, for ep > 1, one layer's all-to-all send/receive buffers (4 * T*k*H). Balanced routing "
    "assumed. GB = 1e9 bytes. Details: docs/COST.md.";

std::string model_name(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_directory(p) || p.filename() == "config.json") {
    p = std::filesystem::absolute(p).lexically_normal();
    if (p.filename() == "config.json") p = p.parent_path();
    if (p.filename().empty()) p = p.parent_path();
    return p.filename().string();
  }
  return p.stem().string();
}

// n with the largest of 1e9 / 1e6 / 1e3 that fits, e.g. "14.316 B" parameters or "9.95 GB".
struct Units {
  const char *giga, *mega, *kilo, *one;
  int decimals;
};
std::string fmt_scaled(double n, const Units& u) {
  char buf[48];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.*f %s", u.decimals, n / 1e9, u.giga);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.*f %s", u.decimals, n / 1e6, u.mega);
  else if (n >= 1e3 && u.kilo) std::snprintf(buf, sizeof buf, "%.*f %s", u.decimals, n / 1e3, u.kilo);
  else std::snprintf(buf, sizeof buf, "%.0f%s", n, u.one);
  return buf;
}
std::string fmt_count(double n) { return fmt_scaled(n, {"B", "M", nullptr, "", 3}); }
std::string fmt_flops(double n) { return fmt_scaled(n, {"GFLOP", "MFLOP", "KFLOP", " FLOP", 2}); }
std::string fmt_bytes(double n) { return fmt_scaled(n, {"GB", "MB", "KB", " B", 2}); }

std::string dtype_word(DType t) { return t == DType::kF32 ? "fp32" : t == DType::kBF16 ? "bf16" : "fp16"; }

// One model's numbers.
struct Costed {
  std::string path, name;
  config::ModelConfig cfg;
  train::LayoutSpec layout;
  train::FlopCount flops;
  train::MemoryPlan plan;
};

Costed cost_of(const std::string& path, const train::LayoutSpec& layout) {
  Costed c;
  c.path = path;
  c.name = model_name(path);
  c.cfg = config::load_model_config(path);
  c.layout = layout;
  if (layout.seq_len > c.cfg.max_position_embeddings)
    log_warn("cost: seq-len ", layout.seq_len, " exceeds max_position_embeddings ", c.cfg.max_position_embeddings,
             " of ", path);
  try {
    c.layout.validate(c.cfg);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  c.flops = train::count_flops(c.cfg, layout.seq_len);
  c.plan = train::plan_memory(c.cfg, c.layout);
  return c;
}

json memory_json(const Costed& c) {
  const auto& p = c.plan;
  const auto& L = c.layout;
  json j;
  j["mode"] = train::memory_mode_name(L.mode);
  j["precision"] = dtype_word(L.compute);
  j["grad_dtype"] = L.mode == train::MemoryMode::kCpu ? "fp32" : dtype_word(L.grads);
  j["ep"] = L.ep;
  j["dp"] = L.dp;
  j["world"] = L.world();
  j["zero1"] = L.zero1;
  j["micro_batch"] = L.micro_batch;
  j["seq_len"] = L.seq_len;
  j["params_on_rank"] = p.params_on_rank;
  j["params_dense"] = p.params_dense;
  j["params_expert_local"] = p.params_expert_local;
  j["experts_per_rank"] = p.experts_per_rank;
  j["params_optimizer_shard"] = p.params_optimizer_shard;
  j["weights_bytes"] = p.weights;
  j["master_bytes"] = p.master;
  j["grad_bytes"] = p.grads;
  j["moment_bytes"] = p.moments;
  j["activation_bytes"] = p.activations;
  j["workspace_bytes"] = p.workspace;
  j["comm_bytes"] = p.comm;
  j["total_bytes"] = p.total;
  j["device_memory_bytes"] = p.judged() ? json(p.device_memory_bytes) : json(nullptr);
  j["fits"] = p.judged() ? json(p.fits()) : json(nullptr);
  return j;
}

json model_json(const Costed& c) {
  json j;
  j["model"] = c.path;
  j["total_params"] = c.flops.params_total;
  j["activated_params"] = c.flops.params_active;
  j["activated_non_embedding_params"] = c.flops.params_active_non_embedding;
  j["embedding_params"] = c.flops.params_embedding;
  j["expert_params"] = c.flops.params_expert;
  j["matmul_params_active"] = c.flops.params_matmul_active;
  j["seq_len"] = c.layout.seq_len;
  j["train_flops_per_token"] = c.flops.train_flops_per_token();
  j["matmul_flops_per_token"] = c.flops.matmul_flops_per_token;
  j["attention_flops_per_token"] = c.flops.attention_flops_per_token;
  j["memory"] = memory_json(c);
  return j;
}

std::string layout_line(const Costed& c) {
  const auto& L = c.layout;
  std::string s = std::string(train::memory_mode_name(L.mode)) + ", " + dtype_word(L.compute) + " compute, " +
                  (L.mode == train::MemoryMode::kCpu ? "fp32" : dtype_word(L.grads)) + " grads, ep " +
                  std::to_string(L.ep) + " x dp " + std::to_string(L.dp) + " = " + std::to_string(L.world()) +
                  (L.world() == 1 ? " rank" : " ranks") + (L.zero1 ? ", ZeRO-1" : "") + ", micro-batch " + std::to_string(L.micro_batch) +
                  " x " + std::to_string(L.seq_len) + " tokens";
  return s;
}

// Rows of the table: label, one value per model, and the ratio of the first to the second.
void row(const char* label, const std::vector<std::string>& cells, double a = std::nan(""), double b = std::nan("")) {
  std::printf("  %-34s", label);
  for (const auto& c : cells) std::printf(" %20s", c.c_str());
  if (!std::isnan(a) && !std::isnan(b) && b != 0) std::printf(" %9.3f", a / b);
  std::printf("\n");
}

void print_table(const std::vector<Costed>& m, bool breakdown) {
  const bool vs = m.size() == 2;
  auto cells = [&](auto f) {
    std::vector<std::string> out;
    for (const auto& c : m) out.push_back(f(c));
    return out;
  };
  auto ratio = [&](auto f) {
    const double nan = std::nan("");
    return vs ? std::make_pair(static_cast<double>(f(m[0])), static_cast<double>(f(m[1]))) : std::make_pair(nan, nan);
  };
  std::printf("  %-34s", "");
  for (const auto& c : m) std::printf(" %20s", c.name.c_str());
  if (vs) std::printf(" %9s", "ratio");
  std::printf("\n");
  row("architecture", cells([](const Costed& c) {
        return c.cfg.model_type + " " + std::to_string(c.cfg.num_hidden_layers) + "L H" +
               std::to_string(c.cfg.hidden_size);
      }));
  if (m[0].cfg.is_moe() || (vs && m[1].cfg.is_moe()))
    row("experts (routed top-k / shared)", cells([](const Costed& c) {
          if (!c.cfg.is_moe()) return std::string("-");
          return std::to_string(c.cfg.num_experts) + " top-" + std::to_string(c.cfg.num_experts_per_tok) + " / " +
                 std::to_string(c.cfg.shared_expert_intermediate_size) + (c.cfg.shared_expert_gate ? "" : " ungated");
        }));
  auto num_row = [&](const char* label, auto get, auto fmt) {
    auto [a, b] = ratio(get);
    row(label, cells([&](const Costed& c) { return fmt(get(c)); }), a, b);
  };
  num_row("total parameters", [](const Costed& c) { return c.flops.params_total; }, fmt_count);
  num_row("activated parameters", [](const Costed& c) { return c.flops.params_active; }, fmt_count);
  num_row("activated non-embedding", [](const Costed& c) { return c.flops.params_active_non_embedding; }, fmt_count);
  num_row("train FLOPs / token", [](const Costed& c) { return c.flops.train_flops_per_token(); }, fmt_flops);
  num_row("  6 * N_matmul", [](const Costed& c) { return c.flops.matmul_flops_per_token; }, fmt_flops);
  num_row("  12 * L * S * q_dim (attention)", [](const Costed& c) { return c.flops.attention_flops_per_token; },
          fmt_flops);
  std::printf("\n  FLOPs/token = 6 * N_matmul + 12 * L * S * q_dim at S = %lld; N_matmul = activated GEMM weights "
              "incl. lm_head\n  (%s)\n\n",
              static_cast<long long>(m[0].layout.seq_len), fmt_count(m[0].flops.params_matmul_active).c_str());

  for (const auto& c : m) std::printf("  memory per rank, %s: %s\n", c.name.c_str(), layout_line(c).c_str());
  auto mem_row = [&](const char* label, auto get) {
    auto [a, b] = ratio([&](const Costed& c) { return static_cast<double>(get(c)); });
    row(label, cells([&](const Costed& c) { return fmt_bytes(static_cast<double>(get(c))); }), a, b);
  };
  num_row("parameters on rank", [](const Costed& c) { return static_cast<double>(c.plan.params_on_rank); }, fmt_count);
  if (m[0].cfg.is_moe())
    row("  experts on rank", cells([](const Costed& c) {
          return c.cfg.is_moe() ? std::to_string(c.plan.experts_per_rank) + " of " + std::to_string(c.cfg.num_experts)
                                : std::string("-");
        }));
  num_row("optimizer shard (params)", [](const Costed& c) { return static_cast<double>(c.plan.params_optimizer_shard); },
          fmt_count);
  mem_row("weights", [](const Costed& c) { return c.plan.weights; });
  mem_row("fp32 master weights", [](const Costed& c) { return c.plan.master; });
  mem_row("gradients", [](const Costed& c) { return c.plan.grads; });
  mem_row("AdamW moments (fp32)", [](const Costed& c) { return c.plan.moments; });
  mem_row("activations (one micro-batch)", [](const Costed& c) { return c.plan.activations; });
  mem_row("backward workspace", [](const Costed& c) { return c.plan.workspace; });
  mem_row("all-to-all buffers", [](const Costed& c) { return c.plan.comm; });
  mem_row("total", [](const Costed& c) { return c.plan.total; });
  if (m[0].plan.judged())
    row("fits device memory", cells([](const Costed& c) {
          return std::string(c.plan.fits() ? "yes" : "NO") + " (" + fmt_bytes(c.plan.device_memory_bytes) + ")";
        }));
  if (!breakdown) return;
  for (const auto& c : m) {
    std::printf("\n  activations kept for the backward, %s (per copy x copies):\n", c.name.c_str());
    for (const auto& it : c.plan.activation_items)
      std::printf("    %-58s %12s x %lld\n", it.name.c_str(), fmt_bytes(static_cast<double>(it.bytes)).c_str(),
                  static_cast<long long>(it.count));
    std::printf("  backward workspace:\n");
    for (const auto& it : c.plan.workspace_items)
      std::printf("    %-58s %12s\n", it.name.c_str(), fmt_bytes(static_cast<double>(it.bytes)).c_str());
  }
}

std::string cpu_default(const CLI::App* app, const std::string& device, const std::string& precision) {
  return app->count("--precision") == 0 && device == "cpu" ? "fp32" : precision;
}

}  // namespace

void add_cost_command(CLI::App& root, std::vector<Command>* out) {
  struct Opts {
    std::string model, vs, precision = "bf16", grads = "fp32", device = "gpu";
    train::LayoutSpec layout;
    double device_memory_gb = 0;
    bool json = false, breakdown = false, measure = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = root.add_subcommand("cost", "Parameters, training FLOPs per token and a per-rank memory plan");
  app->footer(kFormulaHelp);
  app->add_option("--model", o->model, "Model config: YAML (configs/models/*.yaml), config.json or HF directory")
      ->required();
  app->add_option("--vs", o->vs, "A second config (e.g. the dense baseline): adds its column and model/vs ratios; "
                                 "a dense model runs the same number of ranks as data parallel");
  app->add_option("--seq-len", o->layout.seq_len, "Sequence length S")->capture_default_str();
  app->add_option("--ep", o->layout.ep, "Expert-parallel ranks (must divide num_experts)")->capture_default_str();
  app->add_option("--dp", o->layout.dp, "Data-parallel replicas (world = ep * dp)")->capture_default_str();
  app->add_flag("--zero1", o->layout.zero1, "Shard fp32 master weights and AdamW moments (ZeRO stage 1)");
  app->add_option("--micro-batch", o->layout.micro_batch, "Sequences per micro-batch per rank")->capture_default_str();
  app->add_option("--precision", o->precision, "Compute dtype of weights and activations: bf16, fp16 or fp32 "
                                               "(default: bf16 in gpu mode, fp32 in cpu mode)");
  app->add_option("--grads", o->grads, "Gradient buffer dtype (gpu mode): fp32 or bf16")->capture_default_str();
  app->add_option("--device", o->device, "Memory mode: gpu (planned GPU trainer) or cpu (what the CPU model "
                                         "allocates: f32 everywhere, attention probabilities, logits + dlogits)")
      ->capture_default_str();
  app->add_option("--device-memory", o->device_memory_gb, "Memory per rank in GB (1e9 bytes) to judge the plan "
                                                          "against (default 80 in gpu mode, none in cpu mode)");
  app->add_option("--threads", o->layout.cpu_threads, "cpu mode: threads of the step (default: OpenMP's)");
  app->add_flag("--breakdown", o->breakdown, "List the activations tensor by tensor");
  app->add_flag("--measure-rss", o->measure, "cpu mode, one rank: run one forward + backward step and report the "
                                             "measured peak RSS above the process baseline next to the plan");
  app->add_flag("--json", o->json, "Print the numbers as one JSON object on the last stdout line");
  out->push_back({app, [o, app]() {
                    train::LayoutSpec L = o->layout;
                    L.mode = train::memory_mode_parse(o->device);
                    // The CPU trains in fp32 unless told otherwise; the GPU in bf16.
                    L.compute = dtype_parse(cpu_default(app, o->device, o->precision));
                    L.grads = dtype_parse(o->grads);
                    const bool cpu = L.mode == train::MemoryMode::kCpu;
                    if (cpu && app->count("--threads") == 0) L.cpu_threads = train::cpu_step_threads();
                    const bool given = app->count("--device-memory") > 0;
                    const double gb = given ? o->device_memory_gb : (cpu ? 0.0 : 80.0);
                    MOEKIT_CHECK(std::isfinite(gb) && gb >= 0, "--device-memory must be a non-negative number of GB, "
                                 "got ", gb);
                    L.device_memory_bytes = gb * 1e9;
                    MOEKIT_CHECK(!o->measure || cpu, "--measure-rss needs --device cpu");
                    std::vector<Costed> m;
                    m.push_back(cost_of(o->model, L));
                    if (!o->vs.empty()) {
                      train::LayoutSpec lv = L;
                      const config::ModelConfig vc = config::load_model_config(o->vs);
                      if (!vc.is_moe()) {  // same ranks, all data parallel
                        lv.dp = L.world();
                        lv.ep = 1;
                      }
                      m.push_back(cost_of(o->vs, lv));
                    }
                    std::printf("moekit cost: %s%s%s\n\n", o->model.c_str(), o->vs.empty() ? "" : " vs ",
                                o->vs.c_str());
                    print_table(m, o->breakdown);
                    json j = model_json(m[0]);
                    if (m.size() == 2) {
                      j["vs"] = model_json(m[1]);
                      json r;
                      for (const char* key : {"total_params", "activated_params", "activated_non_embedding_params",
                                              "train_flops_per_token"})
                        r[key] = j[key].get<double>() / j["vs"][key].get<double>();
                      r["memory_total_bytes"] =
                          static_cast<double>(m[0].plan.total) / static_cast<double>(m[1].plan.total);
                      j["ratio"] = r;
                    }
                    if (o->measure) {
                      const train::RssMeasurement rss = train::measure_cpu_step(m[0].cfg, m[0].layout);
                      const double plan = static_cast<double>(m[0].plan.total);
                      const double meas = static_cast<double>(rss.step_bytes());
                      std::printf("\n  measured: peak RSS %s above a baseline of %s (%lld threads); plan %s = %.3f "
                                  "x measured\n",
                                  fmt_bytes(meas).c_str(), fmt_bytes(static_cast<double>(rss.baseline_bytes)).c_str(),
                                  static_cast<long long>(rss.threads), fmt_bytes(plan).c_str(), plan / meas);
                      j["measured"] = {{"baseline_rss_bytes", rss.baseline_bytes},
                                       {"peak_rss_bytes", rss.peak_bytes},
                                       {"step_bytes", rss.step_bytes()},
                                       {"threads", rss.threads},
                                       {"plan_over_measured", plan / meas}};
                    }
                    if (o->json) std::printf("%s\n", j.dump().c_str());
                    return 0;
                  }});
}

}  // namespace moekit::cli
