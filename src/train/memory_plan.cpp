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
  // The CPU model stores weights and gradients as f32 whatever the precision (bf16 values are
  // bf16-representable floats); the GPU holds them in the compute / gradient dtype.
  const int64_t wb = cpu ? f32 : static_cast<int64_t>(dtype_size(L.compute));
  const int64_t gb = cpu ? f32 : static_cast<int64_t>(dtype_size(L.grads));
  p.weights = p.params_on_rank * wb;
  p.grads = p.params_on_rank * gb;
  p.master = L.compute == DType::kF32 ? 0 : p.params_optimizer_shard * f32;  // fp32: weights are the master
  p.moments = p.params_optimizer_shard * 2 * f32;                            // AdamW exp_avg, exp_avg_sq

  // ---- activations of one micro-batch ------------------------------------------------------------
  const int64_t b = cpu ? f32 : static_cast<int64_t>(dtype_size(L.compute));  // activation element
  const int64_t T = L.tokens(), B = L.micro_batch, S = L.seq_len;
  const int64_t H = c.hidden_size, V = c.vocab_size, d = c.head_size(), nh = c.num_attention_heads;
  const int64_t qd = nh * d, kvd = c.num_key_value_heads * d;
  const int64_t n_sparse = c.num_sparse_layers(), n_dense = c.num_hidden_layers - n_sparse;
  const int64_t E = c.num_experts, k = c.num_experts_per_tok, Ie = c.moe_intermediate_size;
  const int64_t Is = c.shared_expert_intermediate_size, I = c.intermediate_size;
  const bool shared = c.is_moe() && Is > 0, gated = shared && c.shared_expert_gate;
  // Rows this rank's experts process: exact for ep = 1; with ep > 1 the mean under balanced
  // routing (each rank sends T*k rows and receives as many). Imbalance scales these terms.
  const int64_t R = T * k;
  const int64_t Lyr = c.num_hidden_layers;
  auto& A = p.activation_items;
  // Per layer (Model::Layer, AttnCache).
  A.push_back({cpu ? "x, n1, attn_out, h, n2, mlp_out (f32) + 2 rstd" : "x, rmsnorm(x), h, rmsnorm(h) + 2 rstd (f32)",
               Lyr, T * ((cpu ? 6 : 4) * H * b + 2 * f32)});
  A.push_back({"attention q, k, v after RoPE", Lyr, T * (qd + 2 * kvd) * b});
  A.push_back({"attention context (o_proj input)", Lyr, T * qd * b});
  if (cpu) A.push_back({"attention probabilities (B, heads, S, S)", Lyr, B * nh * S * S * f32});
  else A.push_back({"attention softmax logsumexp (f32, flash)", Lyr, T * nh * f32});
  if (n_dense > 0) A.push_back({"dense MLP gate/up + silu*up", n_dense, T * 3 * I * b});
  if (n_sparse > 0) {
    // RouterState (+ logits on the CPU), DispatchPlan.
    const int64_t router = 2 * T * E * f32 + T * f32 + R * (4 + f32) + (2 * E + 1) * 8 + 2 * R * 4;
    A.push_back({"router logits, probs, lse, top-k, dispatch plan", n_sparse, router});
    A.push_back({"dispatched rows and expert outputs (T*k rows)", n_sparse, 2 * R * H * b});
    A.push_back({"experts gate/up + silu*up (T*k rows)", n_sparse, R * 3 * Ie * b});
    if (shared)
      A.push_back({gated ? "shared expert gate/up, act, output, sigmoid" : "shared expert gate/up, act", n_sparse,
                   T * 3 * Is * b + (gated ? T * H * b + T * f32 : 0)});
  }
  // Head: token ids, final norm, logits (+ their gradient on the CPU; the GPU keeps them in the
  // compute dtype and overwrites them with their gradient).
  const int64_t head = T * 8 + T * (2 * H * b + f32) + (cpu ? 2 * T * V * f32 + 2 * S * d * f32 : T * V * b);
  A.push_back({cpu ? "ids, final norm, logits + dlogits (f32), RoPE tables" : "ids, final norm, logits", 1, head});
  for (const auto& it : A) p.activations += it.count * it.bytes;

  // ---- backward workspace: Model::backward's four (T, H) buffers live throughout, plus the
  // largest per-layer transient (attention, dense MLP or MoE backward locals).
  // dctx, dq, dk, dv; the CPU kernel also holds one (S, S) softmax gradient per running task.
  int64_t layer_ws = T * (2 * qd + 2 * kvd) * b +
                     (cpu ? std::min(L.cpu_threads, B * c.num_key_value_heads) * S * S * f32 : 0);
  std::string layer_name = cpu ? "attention backward (dctx, dq, dk, dv, per-thread dS)"
                               : "attention backward (dctx, dq, dk, dv)";
  if (n_dense > 0 && T * 3 * I * b > layer_ws) {
    layer_ws = T * 3 * I * b;
    layer_name = "dense MLP backward scratch";
  }
  if (n_sparse > 0) {
    // dyp, dxp, dweights, router dlogits; then either the experts' scratch (CPU: one per
    // thread sized for the busiest expert; GPU: all rows at once) or the shared expert's.
    const int64_t per_expert_rows = ceil_div(R * L.ep, E);
    const int64_t experts_scratch = cpu ? L.cpu_threads * per_expert_rows * 3 * Ie * f32 : R * 3 * Ie * b;
    const int64_t shared_ws = shared ? T * 3 * Is * b + (gated ? T * H * b + T * f32 : 0) : 0;
    const int64_t moe_ws = 2 * R * H * b + R * f32 + T * E * f32 + std::max(experts_scratch, shared_ws);
    if (moe_ws > layer_ws) {
      layer_ws = moe_ws;
      layer_name = "MoE backward (dyp, dxp, router grads, expert/shared scratch)";
    }
  }
  p.workspace_items.push_back({"activation gradients dx, dh, dn, dmlp", 1, 4 * T * H * b});
  p.workspace_items.push_back({layer_name, 1, layer_ws});
  if (!cpu) {
    // kernels/attention_cuda.h's GEMM path: one sequence's scores (f32) and probabilities.
    p.workspace_items.push_back({"attention scores + probabilities of one sequence (heads, S, S)", 1,
                                 nh * S * S * (f32 + b)});
    if (n_sparse > 0 && b != f32) p.workspace_items.push_back({"router input widened to f32", 1, T * H * f32});
  }
  for (const auto& it : p.workspace_items) p.workspace += it.count * it.bytes;

  // ---- expert-parallel all-to-all: send and receive buffers of dispatch and combine for one
  // layer (top-k rows of H), reused by every layer and by the backward.
  p.comm = c.is_moe() && L.ep > 1 ? 4 * R * H * b : 0;

  p.total = p.state() + p.activations + p.workspace + p.comm;
  return p;
}

}  // namespace moekit::train
