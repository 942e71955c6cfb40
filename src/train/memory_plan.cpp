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
  MOEKIT_CHECK(ep >= 1, "ep (", ep, ") must be at least 1");
  MOEKIT_CHECK(dp >= 1, "dp (", dp, ") must be at least 1");
  MOEKIT_CHECK(micro_batch >= 1, "micro-batch (", micro_batch, ") must be at least 1");
  MOEKIT_CHECK(seq_len >= 1, "seq-len (", seq_len, ") must be at least 1");
  MOEKIT_CHECK(cpu_threads >= 1, "cpu threads (", cpu_threads, ") must be at least 1");
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

MemoryPlan plan_memory(const config::ModelConfig& c, const LayoutSpec& L) {
  c.validate();
  L.validate(c);
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
  const int64_t f32 = 4;
  // model/params.h: every rank holds its parameters as f32 values and f32 gradients; a device
  // computing in bf16 adds a bf16 copy for the GEMMs. optim/optim.h: the f32 values are the
  // masters on the GPU (so ZeRO-1 shards the moments there, not the masters); the CPU keeps
  // separate f32 masters (of its shard) when it computes on bf16- or fp16-rounded values.
  const bool low = L.compute != DType::kF32;
  const int64_t gb = cpu ? f32 : static_cast<int64_t>(dtype_size(L.grads));
  p.weights = p.params_on_rank * (cpu || !low ? f32 : static_cast<int64_t>(dtype_size(L.compute)));
  p.grads = p.params_on_rank * gb;
  p.master = !low ? 0 : cpu ? p.params_optimizer_shard * f32 : p.params_on_rank * f32;
  p.moments = p.params_optimizer_shard * 2 * f32;  // AdamW exp_avg, exp_avg_sq

  // ---- activations of one micro-batch: the buffers model.cpp and moe_layer.cpp keep from the
  // forward for the backward (every backend runs the same model; they differ in element type and
  // in what attention saves).
  const int64_t b = cpu ? f32 : static_cast<int64_t>(dtype_size(L.compute));  // activation element
  const int64_t T = L.tokens(), B = L.micro_batch, S = L.seq_len;
  const int64_t H = c.hidden_size, V = c.vocab_size, d = c.head_size(), nh = c.num_attention_heads;
  const int64_t qd = nh * d, kvd = c.num_key_value_heads * d;
  const int64_t n_sparse = c.num_sparse_layers(), n_dense = c.num_hidden_layers - n_sparse;
  const int64_t E = c.num_experts, k = c.num_experts_per_tok, Ie = c.moe_intermediate_size;
  const int64_t Is = c.shared_expert_intermediate_size, I = c.intermediate_size;
  const bool shared = c.is_moe() && Is > 0, gated = shared && c.shared_expert_gate, ep = L.ep > 1;
  // Rows this rank's experts process: exact for ep = 1; with ep > 1 the mean under balanced
  // routing (each rank sends T*k rows and receives as many). Imbalance scales these terms.
  const int64_t R = T * k;
  const int64_t Lyr = c.num_hidden_layers;
  auto& A = p.activation_items;
  A.push_back({"layer input, rmsnorm(x), h, rmsnorm(h) + 2 rstd (f32)", Lyr, T * (4 * H * b + 2 * f32)});
  A.push_back({"attention q, k, v after RoPE", Lyr, T * (qd + 2 * kvd) * b});
  A.push_back({"attention context (o_proj input)", Lyr, T * qd * b});
  if (cpu) A.push_back({"attention probabilities (B, heads, S, S)", Lyr, B * nh * S * S * f32});
  else A.push_back({"attention softmax logsumexp (f32)", Lyr, T * nh * f32});
  if (n_dense > 0) A.push_back({"dense MLP gate/up + silu*up", n_dense, T * 3 * I * b});
  if (n_sparse > 0) {
    // Router scores, lse, top-k ids and weights, the plan's row map (f32 / i32), the bias.
    A.push_back({"router scores, lse, top-k, row map", n_sparse, T * E * f32 + T * f32 + 3 * R * 4 + E * f32});
    A.push_back({"dispatched rows and expert outputs (T*k rows)", n_sparse, 2 * R * H * b});
    if (ep) A.push_back({"expert-parallel: received rows and their grouping", n_sparse, R * H * b + R * 4});
    A.push_back({"experts gate/up + silu*up (T*k rows)", n_sparse, R * 3 * Ie * b});
    if (shared)
      A.push_back({gated ? "shared expert gate/up, act, output, sigmoid" : "shared expert gate/up, act", n_sparse,
                   T * 3 * Is * b + (gated ? T * H * b + T * f32 : 0)});
  }
  // Head: token ids and targets, the last residual and its norm, the logits (overwritten by
  // their gradient in a training forward), the RoPE tables.
  A.push_back({"ids, targets, final residual and norm, logits, RoPE tables", 1,
               T * 16 + T * (2 * H * b + f32) + T * V * b + 2 * S * d * f32});
  for (const auto& it : A) p.activations += it.count * it.bytes;

  // ---- workspace: buffers reused by every layer. They grow to their largest use and stay, so
  // the plan adds them all; the CPU kernels' per-thread scratch comes and goes within one op,
  // so only the larger of those two counts.
  auto& W = p.workspace_items;
  W.push_back({"forward outputs of attention and MLP; gradients dx, dh, d(norm)", 1, 5 * T * H * b});
  W.push_back({"attention backward dq, dk, dv", 1, T * (qd + 2 * kvd) * b});
  W.push_back({"attention d(context) / MLP d(act), MLP d(gate, up)", 1,
               std::max(T * qd, T * I) * b + (n_dense > 0 ? T * 2 * I * b : 0)});
  if (n_sparse > 0) {
    W.push_back({"router logits and their gradient, top-k gradients, row tokens", 1,
                 T * E * f32 + T * E * b + 2 * R * 4 + E * f32 + (b != f32 ? T * H * f32 : 0)});
    W.push_back({"expert outputs' gradient (T*k rows) and the experts' dx", 1, 2 * R * H * b});
    if (shared) W.push_back({"shared expert backward scratch", 1, T * 3 * Is * b + (gated ? T * H * b + T * b : 0)});
  }
  if (cpu) {
    // The expert backward's scratch (one per thread, sized for the busiest expert) or the
    // attention backward's softmax gradient per running (sequence, kv head) task.
    const int64_t per_expert_rows = n_sparse > 0 ? ceil_div(R * L.ep, E) : 0;
    const int64_t experts_scratch = L.cpu_threads * per_expert_rows * 3 * Ie * f32;
    const int64_t attn_scratch = std::min(L.cpu_threads, B * c.num_key_value_heads) * S * S * f32;
    W.push_back({experts_scratch > attn_scratch ? "per-thread expert backward scratch"
                                                : "per-thread attention softmax gradient",
                 1, std::max(experts_scratch, attn_scratch)});
  } else {
    // kernels/attention_cuda.h's GEMM path: one sequence's scores (f32) and probabilities, dK/dV
    // summed in f32 (bf16 models), delta; the loss rows; the experts' backward scratch; cuBLAS'
    // workspace (32 MiB).
    W.push_back({"attention scores + probabilities of one sequence, delta", 1,
                 nh * S * S * (f32 + b) + (b != f32 ? 2 * S * kvd * f32 : 0) + T * nh * f32});
    if (n_sparse > 0) W.push_back({"experts backward d(act), d(gate, up)", 1, R * 3 * Ie * b});
    W.push_back({"cuBLAS workspace, loss rows", 1, (int64_t{32} << 20) + T * f32});
  }
  for (const auto& it : W) p.workspace += it.count * it.bytes;

  // ---- expert-parallel all-to-all: the staging buffers every layer's dispatcher shares
  // (received rows, expert outputs grouped by expert).
  p.comm = c.is_moe() && ep ? 2 * R * H * b : 0;

  p.total = p.state() + p.activations + p.workspace + p.comm;
  return p;
}

}  // namespace moekit::train
