// Upcycle recipe: what `moekit upcycle --config RECIPE.yaml` reads. Every key is public and
// documented in docs/UPCYCLE.md; unknown keys are errors naming the key and the file, and
// `--set key=value` overrides any key (the value is read as YAML, like the file).
// resolve_recipe() fills the mode-dependent defaults and checks the recipe against the dense
// model; moe_config() then gives the output Qwen2-MoE ModelConfig.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "core/dtype.h"

namespace moekit::upcycle {

// qwen: Qwen2 report §2.2.2 (replicate, shuffle each copy, cut fine-grained chunks, re-init).
// copy: sparse upcycling (Komatsuzaki et al., ICLR 2023): every expert a copy of the FFN.
// virtual_group: granular upcycling (He et al. 2024, arXiv 2410.07524): expert j is dense
//   shard j mod G, router rows shared within virtual groups of G consecutive experts.
enum class UpcycleMode { kQwen, kCopy, kVirtualGroup };
// element: each parameter independently with probability reinit_ratio.
// neuron: exactly round(ratio * width) neurons per expert (gate/up row + down column).
enum class ReinitMode { kElement, kNeuron };
// source: N(mean, std) of the dense tensor (Drop-Upcycling); init: N(0, initializer_range).
enum class ReinitDistribution { kSource, kInit };
enum class RouterInit { kNormal, kZero };
enum class SharedGateInit { kZero, kNormal };
// Which of the n = routed + shared consecutive chunks are fused into the shared expert.
enum class SharedChunks { kFirst, kLast };
// none; auto: exact factor on down_proj that makes the step-0 MoE reproduce the dense FFN under
// a uniform router; nvidia: cube root of that factor on gate, up and down (He et al. §3);
// factor: a given number on the routed experts' down_proj.
enum class Scaling { kNone, kAuto, kNvidia, kFactor };

const char* mode_name(UpcycleMode m);
const char* scaling_name(Scaling s);

struct Recipe {
  UpcycleMode mode = UpcycleMode::kQwen;
  int64_t num_experts = 0;               // routed experts (required)
  int64_t num_shared_experts = 0;        // fine-grained chunks fused into the shared expert
  int64_t expert_intermediate_size = 0;  // h_E; 0: mode default (copy: the dense width)
  int64_t num_experts_per_tok = 0;       // top-k (required)
  bool norm_topk_prob = false;
  std::optional<double> reinit_ratio;    // default: qwen 0.5, other modes 0
  ReinitMode reinit_mode = ReinitMode::kElement;
  ReinitDistribution reinit_distribution = ReinitDistribution::kSource;
  bool reinit_shared = true;             // the shared expert is re-initialised like the others
  SharedChunks shared_chunks = SharedChunks::kFirst;
  RouterInit router_init = RouterInit::kNormal;
  double router_init_std = 0;            // 0: the dense initializer_range
  SharedGateInit shared_gate_init = SharedGateInit::kZero;
  std::optional<Scaling> output_scaling;  // default: qwen none, other modes auto
  double output_scaling_factor = 1.0;     // for Scaling::kFactor
  std::vector<int64_t> mlp_only_layers;
  int64_t decoder_sparse_step = 1;
  double router_aux_loss_coef = 0.001;
  uint64_t seed = 0;
  DType dtype = DType::kBF16;
  uint64_t max_shard_size = 5000000000ull;  // bytes (decimal "5GB", as huggingface_hub)

  std::string source = "<recipe>";  // the file it came from, for messages

  double ratio() const { return reinit_ratio.value_or(0.0); }
  Scaling scaling() const { return output_scaling.value_or(Scaling::kNone); }
};

// Parse a recipe mapping; `where` names the file in errors.
Recipe recipe_from_yaml_text(const std::string& text, const std::string& where);
Recipe load_recipe(const std::string& path);
// One --set override: `assignment` is "key=value"; errors name the key.
void recipe_set(Recipe* r, const std::string& assignment);
// Every public key, in documentation order.
std::vector<std::string> recipe_keys();

// Fill the mode defaults and validate against the dense model. Errors name the recipe file,
// the key and the value, and what was expected.
void resolve_recipe(Recipe* r, const config::ModelConfig& dense);

// Output architecture: the dense config with model_type qwen2_moe and every MoE field set;
// intermediate_size stays the dense width (used by the dense layers in mlp_only_layers).
config::ModelConfig moe_config(const Recipe& r, const config::ModelConfig& dense);

// Resolved recipe as YAML (every key), as written to OUT/upcycle/recipe.yaml; reading it back
// gives the same recipe.
std::string recipe_to_yaml(const Recipe& r);

// "5GB", "500MB", "4GiB", "1000000" -> bytes (decimal units as huggingface_hub, binary with i).
uint64_t parse_byte_size(const std::string& text, const std::string& what);

}  // namespace moekit::upcycle
