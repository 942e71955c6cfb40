// Memory plan: parameter placement (dense replicated, experts split over ep), optimizer state
// sharding (ZeRO-1, Rajbhandari et al. 2020, stage 1: master weights and moments partitioned
// over the data-parallel replicas of each parameter), and the activations a micro-batch keeps,
// listed tensor by tensor after what src/model and src/moe store (cf. Korthikanti et al. 2022,
// "Reducing Activation Recomputation", section 4, for the per-layer accounting).
#include "train/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/check.h"
#include "core/checked.h"
#include "train/metrics.h"

namespace moekit::train {

MemoryMode memory_mode_parse(const std::string& s) {
  if (s == "gpu") return MemoryMode::kGpu;
  if (s == "cpu") return MemoryMode::kCpu;
  MOEKIT_FAIL("unknown memory mode '", s, "' (expected gpu or cpu)");
}

const char* memory_mode_name(MemoryMode m) { return m == MemoryMode::kGpu ? "gpu" : "cpu"; }

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string divisors(int64_t n) {
  std::ostringstream os;
  for (int64_t d = 1; d <= n; ++d)
    if (n % d == 0) os << (d > 1 ? ", " : "") << d;
  return os.str();
}

bool is_float_dtype(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

}  // namespace

void LayoutSpec::validate(const config::ModelConfig& cfg) const {
  constexpr int64_t kMaxRanks = int64_t{1} << 20;
  MOEKIT_CHECK(ep >= 1 && ep <= kMaxRanks, "ep (", ep, ") must be in [1, ", kMaxRanks, "]");
  MOEKIT_CHECK(dp >= 1 && dp <= kMaxRanks, "dp (", dp, ") must be in [1, ", kMaxRanks, "]");
  MOEKIT_CHECK(micro_batch >= 1, "micro-batch (", micro_batch, ") must be at least 1");
  MOEKIT_CHECK(seq_len >= 1, "seq-len (", seq_len, ") must be at least 1");
  MOEKIT_CHECK(cpu_threads >= 1 && cpu_threads <= kMaxRanks, "cpu threads (", cpu_threads, ") must be in [1, ",
               kMaxRanks, "]");
  MOEKIT_CHECK(is_float_dtype(compute), "precision must be fp32, bf16 or fp16, got ", dtype_name(compute));
  MOEKIT_CHECK(is_float_dtype(grads), "gradient dtype must be fp32, bf16 or fp16, got ", dtype_name(grads));
  MOEKIT_CHECK(device_memory_bytes >= 0, "device memory (", device_memory_bytes, " bytes) must not be negative");
  if (!cfg.is_moe()) {
    MOEKIT_CHECK(ep == 1, "ep (", ep, ") must be 1 for a dense ", cfg.model_type,
                 " model: it has no routed experts to split (use dp for more ranks)");
    return;
  }
  MOEKIT_CHECK(cfg.num_experts % ep == 0, "ep (", ep, ") must divide num_experts (", cfg.num_experts,
               "): experts are split evenly over the ep ranks; possible ep values: ", divisors(cfg.num_experts));
}

namespace {

// Every byte count below is a product of config fields and layout options, any of which may
// come from a user: CheckedSize (core/checked.h) refuses a product that overflows.
using Z = CheckedSize;

MemoryPlan plan_memory_checked(const config::ModelConfig& c, const LayoutSpec& L) {
  const bool cpu = L.mode == MemoryMode::kCpu;
  const FlopCount fc = count_flops(c, L.seq_len);
  MemoryPlan p;
  p.device_memory_bytes = L.device_memory_bytes;

  // ---- parameters and optimizer state ----------------------------------------------------------
  const int64_t total = std::llround(fc.params_total), expert = std::llround(fc.params_expert);
  p.params_dense = total - expert;
  p.params_expert_local = expert / L.ep;  // exact: ep divides num_experts
  p.experts_per_rank = c.is_moe() ? c.num_experts / L.ep : 0;
  p.params_on_rank = p.params_dense + p.params_expert_local;
  // Dense parameters are replicated on all ep*dp ranks, a rank's experts on its dp replicas.
  p.params_optimizer_shard =
      L.zero1 ? ceil_div(p.params_dense, L.world()) + ceil_div(p.params_expert_local, L.dp) : p.params_on_rank;
  const Z f32 = 4;
  // model/params.h: every rank holds its parameters as f32 values and f32 gradients; a device
  // computing in bf16 adds a bf16 copy for the GEMMs. optim/optim.h: the f32 values are the
  // masters on the GPU (so ZeRO-1 shards the moments there, not the masters); the CPU keeps
  // separate f32 masters (of its shard) when it computes on bf16- or fp16-rounded values.
  const bool low = L.compute != DType::kF32;
  const Z gb = cpu ? f32 : Z(static_cast<int64_t>(dtype_size(L.grads)));
  const Z on_rank = p.params_on_rank, shard = p.params_optimizer_shard;
  p.weights = (on_rank * (cpu || !low ? f32 : Z(static_cast<int64_t>(dtype_size(L.compute))))).value();
  p.grads = (on_rank * gb).value();
  p.master = !low ? 0 : ((cpu ? shard : on_rank) * f32).value();
  p.moments = (shard * 2 * f32).value();  // AdamW exp_avg, exp_avg_sq

  // ---- activations of one micro-batch: the buffers model.cpp and moe_layer.cpp keep from the
  // forward for the backward (every backend runs the same model; they differ in element type and
  // in what attention saves).
  const Z b = cpu ? f32 : Z(static_cast<int64_t>(dtype_size(L.compute)));  // activation element
  const Z B = L.micro_batch, S = L.seq_len, T = B * S;
  const Z H = c.hidden_size, V = c.vocab_size, d = c.head_size(), nh = c.num_attention_heads;
  const Z qd = nh * d, kvd = c.num_key_value_heads * d;
  const int64_t n_sparse = c.num_sparse_layers(), n_dense = c.num_hidden_layers - n_sparse;
  const Z E = c.num_experts, k = c.num_experts_per_tok, Ie = c.moe_intermediate_size;
  const Z Is = c.shared_expert_intermediate_size, I = c.intermediate_size;
  const bool shared = c.is_moe() && Is.value() > 0, gated = shared && c.shared_expert_gate, ep = L.ep > 1;
  const bool narrow = b.value() != f32.value();
  // Rows this rank's experts process: exact for ep = 1; with ep > 1 the mean under balanced
  // routing (each rank sends T*k rows and receives as many). Imbalance scales these terms.
  const Z R = T * k;
  const int64_t Lyr = c.num_hidden_layers;
  auto item = [](std::vector<MemoryItem>* out, const std::string& name, int64_t count, Z bytes) {
    out->push_back({name, count, bytes.value()});
  };
  auto& A = p.activation_items;
  item(&A, "layer input, rmsnorm(x), h, rmsnorm(h) + 2 rstd (f32)", Lyr, T * (4 * H * b + 2 * f32));
  item(&A, "attention q, k, v after RoPE", Lyr, T * (qd + 2 * kvd) * b);
  item(&A, "attention context (o_proj input)", Lyr, T * qd * b);
  if (cpu) item(&A, "attention probabilities (B, heads, S, S)", Lyr, B * nh * S * S * f32);
  else item(&A, "attention softmax logsumexp (f32)", Lyr, T * nh * f32);
  if (n_dense > 0) item(&A, "dense MLP gate/up + silu*up", n_dense, T * 3 * I * b);
  if (n_sparse > 0) {
    // Router scores, lse, top-k ids and weights, the plan's row map (f32 / i32), the bias.
    item(&A, "router scores, lse, top-k, row map", n_sparse, T * E * f32 + T * f32 + 3 * R * 4 + E * f32);
    item(&A, "dispatched rows and expert outputs (T*k rows)", n_sparse, 2 * R * H * b);
    if (ep) item(&A, "expert-parallel: received rows and their grouping", n_sparse, R * H * b + R * 4);
    item(&A, "experts gate/up + silu*up (T*k rows)", n_sparse, R * 3 * Ie * b);
    if (shared)
      item(&A, gated ? "shared expert gate/up, act, output, sigmoid" : "shared expert gate/up, act", n_sparse,
           T * 3 * Is * b + (gated ? T * H * b + T * f32 : Z(0)));
  }
  // Head: token ids and targets, the last residual and its norm, the logits (overwritten by
  // their gradient in a training forward), the RoPE tables.
  item(&A, "ids, targets, final residual and norm, logits, RoPE tables", 1,
       T * 16 + T * (2 * H * b + f32) + T * V * b + 2 * S * d * f32);
  Z activations = 0;
  for (const auto& it : A) activations += Z(it.count) * it.bytes;
  p.activations = activations.value();

  // ---- workspace: buffers reused by every layer. They grow to their largest use and stay, so
  // the plan adds them all; the CPU kernels' per-thread scratch comes and goes within one op,
  // so only the larger of those two counts.
  auto& W = p.workspace_items;
  item(&W, "forward outputs of attention and MLP; gradients dx, dh, d(norm)", 1, 5 * T * H * b);
  item(&W, "attention backward dq, dk, dv", 1, T * (qd + 2 * kvd) * b);
  item(&W, "attention d(context) / MLP d(act), MLP d(gate, up)", 1,
       Z(std::max((T * qd).value(), (T * I).value())) * b + (n_dense > 0 ? T * 2 * I * b : Z(0)));
  if (n_sparse > 0) {
    item(&W, "router logits and their gradient, top-k gradients, row tokens", 1,
         T * E * f32 + T * E * b + 2 * R * 4 + E * f32 + (narrow ? T * H * f32 : Z(0)));
    item(&W, "expert outputs' gradient (T*k rows) and the experts' dx", 1, 2 * R * H * b);
    if (shared) item(&W, "shared expert backward scratch", 1, T * 3 * Is * b + (gated ? T * H * b + T * b : Z(0)));
  }
  if (cpu) {
    // The expert backward's scratch (one per thread, sized for the busiest expert) or the
    // attention backward's softmax gradient per running (sequence, kv head) task.
    const Z per_expert_rows = n_sparse > 0 ? ceil_div((R * L.ep).value(), E.value()) : 0;
    const Z experts_scratch = Z(L.cpu_threads) * per_expert_rows * 3 * Ie * f32;
    const Z attn_scratch = Z(std::min(L.cpu_threads, (B * c.num_key_value_heads).value())) * S * S * f32;
    const bool experts_larger = experts_scratch.value() > attn_scratch.value();
    item(&W, experts_larger ? "per-thread expert backward scratch" : "per-thread attention softmax gradient", 1,
         experts_larger ? experts_scratch : attn_scratch);
  } else {
    // kernels/attention_cuda.h's GEMM path: one sequence's scores (f32) and probabilities, dK/dV
    // summed in f32 (bf16 models), delta; the loss rows; the experts' backward scratch; cuBLAS'
    // workspace (32 MiB).
    item(&W, "attention scores + probabilities of one sequence, delta", 1,
         nh * S * S * (f32 + b) + (narrow ? 2 * S * kvd * f32 : Z(0)) + T * nh * f32);
    if (n_sparse > 0) item(&W, "experts backward d(act), d(gate, up)", 1, R * 3 * Ie * b);
    item(&W, "cuBLAS workspace, loss rows", 1, Z(int64_t{32} << 20) + T * f32);
  }
  Z workspace = 0;
  for (const auto& it : W) workspace += Z(it.count) * it.bytes;
  p.workspace = workspace.value();

  // ---- expert-parallel all-to-all: the staging buffers every layer's dispatcher shares
  // (received rows, expert outputs grouped by expert).
  p.comm = c.is_moe() && ep ? (2 * R * H * b).value() : 0;

  p.total = (Z(p.weights) + p.master + p.grads + p.moments + p.activations + p.workspace + p.comm).value();
  return p;
}

}  // namespace

MemoryPlan plan_memory(const config::ModelConfig& c, const LayoutSpec& L) {
  c.validate();
  L.validate(c);
  try {
    return plan_memory_checked(c, L);
  } catch (const Error& e) {
    MOEKIT_FAIL("memory plan for seq-len ", L.seq_len, ", micro-batch ", L.micro_batch, ", ep ", L.ep, ", dp ",
                L.dp, ": a byte count does not fit in 64 bits (", e.what(), ")");
  }
}

}  // namespace moekit::train
