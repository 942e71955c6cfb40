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
  // The CPU model stores weights and gradients as f32 whatever the precision (bf16 values are
  // bf16-representable floats); the GPU holds them in the compute / gradient dtype.
  const Z wb = cpu ? f32 : Z(static_cast<int64_t>(dtype_size(L.compute)));
  const Z gb = cpu ? f32 : Z(static_cast<int64_t>(dtype_size(L.grads)));
  p.weights = (p.params_on_rank * wb).value();
  p.grads = (p.params_on_rank * gb).value();
  p.master = L.compute == DType::kF32 ? 0 : (p.params_optimizer_shard * f32).value();  // fp32: weights are the master
  p.moments = (p.params_optimizer_shard * 2 * f32).value();                            // AdamW exp_avg, exp_avg_sq

  // ---- activations of one micro-batch ------------------------------------------------------------
  const Z b = cpu ? f32 : Z(static_cast<int64_t>(dtype_size(L.compute)));  // activation element
  const Z B = L.micro_batch, S = L.seq_len, T = B * S;
  const Z H = c.hidden_size, V = c.vocab_size, d = c.head_size(), nh = c.num_attention_heads;
  const Z qd = nh * d, kvd = c.num_key_value_heads * d;
  const int64_t n_sparse = c.num_sparse_layers(), n_dense = c.num_hidden_layers - n_sparse;
  const Z E = c.num_experts, k = c.num_experts_per_tok, Ie = c.moe_intermediate_size;
  const Z Is = c.shared_expert_intermediate_size, I = c.intermediate_size;
  const bool shared = c.is_moe() && Is.value() > 0, gated = shared && c.shared_expert_gate;
  // Rows this rank's experts process: exact for ep = 1; with ep > 1 the mean under balanced
  // routing (each rank sends T*k rows and receives as many). Imbalance scales these terms.
  const Z R = T * k;
  const int64_t Lyr = c.num_hidden_layers;
  auto& A = p.activation_items;
  auto item = [](std::vector<MemoryItem>* out, const std::string& name, int64_t count, Z bytes) {
    out->push_back({name, count, bytes.value()});
  };
  // Per layer (Model::Layer, AttnCache).
  item(&A, cpu ? "x, n1, attn_out, h, n2, mlp_out (f32) + 2 rstd" : "x, rmsnorm(x), h, rmsnorm(h) + 2 rstd (f32)",
       Lyr, T * (Z(cpu ? 6 : 4) * H * b + 2 * f32));
  item(&A, "attention q, k, v after RoPE", Lyr, T * (qd + 2 * kvd) * b);
  item(&A, "attention context (o_proj input)", Lyr, T * qd * b);
  if (cpu) item(&A, "attention probabilities (B, heads, S, S)", Lyr, B * nh * S * S * f32);
  else item(&A, "attention softmax logsumexp (f32, flash)", Lyr, T * nh * f32);
  if (n_dense > 0) item(&A, "dense MLP gate/up + silu*up", n_dense, T * 3 * I * b);
  if (n_sparse > 0) {
    // RouterState (+ logits on the CPU), DispatchPlan.
    const Z router = 2 * T * E * f32 + T * f32 + R * (4 + f32) + (2 * E + 1) * 8 + 2 * R * 4;
    item(&A, "router logits, probs, lse, top-k, dispatch plan", n_sparse, router);
    item(&A, "dispatched rows and expert outputs (T*k rows)", n_sparse, 2 * R * H * b);
    item(&A, "experts gate/up + silu*up (T*k rows)", n_sparse, R * 3 * Ie * b);
    if (shared)
      item(&A, gated ? "shared expert gate/up, act, output, sigmoid" : "shared expert gate/up, act", n_sparse,
           T * 3 * Is * b + (gated ? T * H * b + T * f32 : Z(0)));
  }
  // Head: token ids, final norm, logits (+ their gradient on the CPU; the GPU keeps them in the
  // compute dtype and overwrites them with their gradient).
  const Z head = T * 8 + T * (2 * H * b + f32) + (cpu ? 2 * T * V * f32 + 2 * S * d * f32 : T * V * b);
  item(&A, cpu ? "ids, final norm, logits + dlogits (f32), RoPE tables" : "ids, final norm, logits", 1, head);
  Z activations = 0;
  for (const auto& it : A) activations += Z(it.count) * it.bytes;
  p.activations = activations.value();

  // ---- backward workspace: Model::backward's four (T, H) buffers live throughout, plus the
  // largest per-layer transient (attention, dense MLP or MoE backward locals).
  // dctx, dq, dk, dv; the CPU kernel also holds one (S, S) softmax gradient per running task.
  Z layer_ws = T * (2 * qd + 2 * kvd) * b +
               (cpu ? Z(std::min(L.cpu_threads, (B * c.num_key_value_heads).value())) * S * S * f32 : Z(0));
  std::string layer_name = cpu ? "attention backward (dctx, dq, dk, dv, per-thread dS)"
                               : "attention backward (dctx, dq, dk, dv)";
  if (n_dense > 0 && (T * 3 * I * b).value() > layer_ws.value()) {
    layer_ws = T * 3 * I * b;
    layer_name = "dense MLP backward scratch";
  }
  if (n_sparse > 0) {
    // dyp, dxp, dweights, router dlogits; then either the experts' scratch (CPU: one per
    // thread sized for the busiest expert; GPU: all rows at once) or the shared expert's.
    const Z per_expert_rows = ceil_div((R * L.ep).value(), E.value());
    const Z experts_scratch = cpu ? L.cpu_threads * per_expert_rows * 3 * Ie * f32 : R * 3 * Ie * b;
    const Z shared_ws = shared ? T * 3 * Is * b + (gated ? T * H * b + T * f32 : Z(0)) : Z(0);
    const Z moe_ws = 2 * R * H * b + R * f32 + T * E * f32 + std::max(experts_scratch.value(), shared_ws.value());
    if (moe_ws.value() > layer_ws.value()) {
      layer_ws = moe_ws;
      layer_name = "MoE backward (dyp, dxp, router grads, expert/shared scratch)";
    }
  }
  item(&p.workspace_items, "activation gradients dx, dh, dn, dmlp", 1, 4 * T * H * b);
  item(&p.workspace_items, layer_name, 1, layer_ws);
  if (!cpu) {
    // kernels/attention_cuda.h's GEMM path: one sequence's scores (f32) and probabilities.
    item(&p.workspace_items, "attention scores + probabilities of one sequence (heads, S, S)", 1,
         nh * S * S * (f32 + b));
    if (n_sparse > 0 && b.value() != f32.value()) item(&p.workspace_items, "router input widened to f32", 1, T * H * f32);
  }
  Z workspace = 0;
  for (const auto& it : p.workspace_items) workspace += Z(it.count) * it.bytes;
  p.workspace = workspace.value();

  // ---- expert-parallel all-to-all: send and receive buffers of dispatch and combine for one
  // layer (top-k rows of H), reused by every layer and by the backward.
  p.comm = c.is_moe() && L.ep > 1 ? (4 * R * H * b).value() : 0;

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
