// Recipe parsing, --set overrides, mode defaults, validation against the dense model, the
// output ModelConfig and the YAML dump. One table of keys (name, reader, writer) drives the
// file reader, --set and the dump, so a key added here is public everywhere at once.
#include "upcycle/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <sstream>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/log.h"

namespace moekit::upcycle {
namespace {

// Typed reads of one YAML value; `key` and `where` name it in errors.
struct Value {
  const YAML::Node& node;
  const std::string& key;
  const std::string& where;

  std::string text() const {
    MOEKIT_CHECK(node.IsDefined() && !node.IsNull(), where, ": ", key, " has no value");
    MOEKIT_CHECK(node.IsScalar(), where, ": ", key, " must be a single value, got '", clip_for_message(YAML::Dump(node)),
                 "'");
    return node.Scalar();
  }
  template <typename T>
  T as(const char* expected) const {
    const std::string s = text();
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      MOEKIT_FAIL(where, ": ", key, " must be ", expected, ", got '", clip_for_message(s), "'");
    }
  }
  // Counts and widths: the upper bound keeps products of two of them (shared width = experts x
  // width) far inside 64 bits; the model config's own bounds then apply to the result.
  int64_t integer(int64_t min) const {
    constexpr int64_t kMax = int64_t{1} << 30;
    const int64_t v = as<int64_t>("an integer");
    MOEKIT_CHECK(v >= min && v <= kMax, where, ": ", key, " must be in [", min, ", ", kMax, "], got ", v);
    return v;
  }
  double number() const {
    const double v = as<double>("a number");
    MOEKIT_CHECK(std::isfinite(v), where, ": ", key, " must be a finite number, got '", text(), "'");
    return v;
  }
  bool boolean() const { return as<bool>("true or false"); }
};

template <typename E>
const char* choice_name(E v, std::initializer_list<std::pair<const char*, E>> options) {
  for (const auto& [name, value] : options)
    if (v == value) return name;
  return "?";
}

#define MOEKIT_CHOICES(Type, ...)                                         \
  const std::initializer_list<std::pair<const char*, Type>>& choices(Type) { \
    static const std::initializer_list<std::pair<const char*, Type>> kList = {__VA_ARGS__}; \
    return kList;                                                         \
  }
MOEKIT_CHOICES(UpcycleMode, {"qwen", UpcycleMode::kQwen}, {"copy", UpcycleMode::kCopy},
               {"virtual_group", UpcycleMode::kVirtualGroup}, {"virtual-group", UpcycleMode::kVirtualGroup})
MOEKIT_CHOICES(ReinitMode, {"element", ReinitMode::kElement}, {"neuron", ReinitMode::kNeuron})
MOEKIT_CHOICES(ReinitDistribution, {"source", ReinitDistribution::kSource}, {"init", ReinitDistribution::kInit})
MOEKIT_CHOICES(RouterInit, {"normal", RouterInit::kNormal}, {"zero", RouterInit::kZero})
MOEKIT_CHOICES(SharedGateInit, {"zero", SharedGateInit::kZero}, {"normal", SharedGateInit::kNormal})
MOEKIT_CHOICES(SharedChunks, {"first", SharedChunks::kFirst}, {"last", SharedChunks::kLast})
#undef MOEKIT_CHOICES

template <typename E>
E read_choice(const Value& v) {
  const std::string s = v.text();
  std::string names;
  for (const auto& [name, value] : choices(E{})) {
    if (s == name) return value;
    if (std::string(name).find('-') == std::string::npos) names += names.empty() ? name : std::string(", ") + name;
  }
  MOEKIT_FAIL(v.where, ": ", v.key, " must be one of ", names, ", got '", s, "'");
}
template <typename E>
std::string write_choice(E e) {
  return choice_name(e, choices(E{}));
}

std::string num(double v) {
  std::ostringstream os;
  os.imbue(std::locale::classic());
  os.precision(17);
  os << v;
  return os.str();
}

struct Key {
  const char* name;
  std::function<void(Recipe*, const Value&)> read;
  std::function<std::string(const Recipe&)> write;  // YAML scalar or flow list
};

const std::vector<Key>& keys() {
  static const std::vector<Key> kKeys = {
      {"mode", [](Recipe* r, const Value& v) { r->mode = read_choice<UpcycleMode>(v); },
       [](const Recipe& r) { return std::string(mode_name(r.mode)); }},
      {"num_experts", [](Recipe* r, const Value& v) { r->num_experts = v.integer(1); },
       [](const Recipe& r) { return std::to_string(r.num_experts); }},
      {"num_shared_experts", [](Recipe* r, const Value& v) { r->num_shared_experts = v.integer(0); },
       [](const Recipe& r) { return std::to_string(r.num_shared_experts); }},
      {"expert_intermediate_size", [](Recipe* r, const Value& v) { r->expert_intermediate_size = v.integer(0); },
       [](const Recipe& r) { return std::to_string(r.expert_intermediate_size); }},
      {"num_experts_per_tok", [](Recipe* r, const Value& v) { r->num_experts_per_tok = v.integer(1); },
       [](const Recipe& r) { return std::to_string(r.num_experts_per_tok); }},
      {"norm_topk_prob", [](Recipe* r, const Value& v) { r->norm_topk_prob = v.boolean(); },
       [](const Recipe& r) { return std::string(r.norm_topk_prob ? "true" : "false"); }},
      {"reinit_ratio",
       [](Recipe* r, const Value& v) {
         const double x = v.number();
         MOEKIT_CHECK(x >= 0 && x <= 1, v.where, ": reinit_ratio must be in [0, 1], got ", v.text());
         r->reinit_ratio = x;
       },
       [](const Recipe& r) { return num(r.ratio()); }},
      {"reinit_mode", [](Recipe* r, const Value& v) { r->reinit_mode = read_choice<ReinitMode>(v); },
       [](const Recipe& r) { return write_choice(r.reinit_mode); }},
      {"reinit_distribution",
       [](Recipe* r, const Value& v) { r->reinit_distribution = read_choice<ReinitDistribution>(v); },
       [](const Recipe& r) { return write_choice(r.reinit_distribution); }},
      {"reinit_shared", [](Recipe* r, const Value& v) { r->reinit_shared = v.boolean(); },
       [](const Recipe& r) { return std::string(r.reinit_shared ? "true" : "false"); }},
      {"shared_chunks", [](Recipe* r, const Value& v) { r->shared_chunks = read_choice<SharedChunks>(v); },
       [](const Recipe& r) { return write_choice(r.shared_chunks); }},
      {"router_init", [](Recipe* r, const Value& v) { r->router_init = read_choice<RouterInit>(v); },
       [](const Recipe& r) { return write_choice(r.router_init); }},
      {"router_init_std",
       [](Recipe* r, const Value& v) {
         r->router_init_std = v.number();
         MOEKIT_CHECK(r->router_init_std >= 0, v.where, ": router_init_std must be >= 0 (0: initializer_range), got ",
                      v.text());
       },
       [](const Recipe& r) { return num(r.router_init_std); }},
      {"shared_gate_init", [](Recipe* r, const Value& v) { r->shared_gate_init = read_choice<SharedGateInit>(v); },
       [](const Recipe& r) { return write_choice(r.shared_gate_init); }},
      {"output_scaling",
       [](Recipe* r, const Value& v) {
         const std::string s = v.text();
         if (s == "none") r->output_scaling = Scaling::kNone;
         else if (s == "auto") r->output_scaling = Scaling::kAuto;
         else if (s == "nvidia") r->output_scaling = Scaling::kNvidia;
         else {
           double f = 0;
           try {
             f = v.node.as<double>();
           } catch (const YAML::Exception&) {
             MOEKIT_FAIL(v.where, ": output_scaling must be none, auto, nvidia or a positive number, got '", s, "'");
           }
           MOEKIT_CHECK(f > 0 && std::isfinite(f), v.where, ": output_scaling factor must be positive, got ", s);
           r->output_scaling = Scaling::kFactor;
           r->output_scaling_factor = f;
         }
       },
       [](const Recipe& r) {
         return r.scaling() == Scaling::kFactor ? num(r.output_scaling_factor) : std::string(scaling_name(r.scaling()));
       }},
      {"mlp_only_layers",
       [](Recipe* r, const Value& v) {
         r->mlp_only_layers.clear();
         if (v.node.IsNull()) return;
         MOEKIT_CHECK(v.node.IsSequence(), v.where, ": mlp_only_layers must be a list of layer indices like [0, 23], got '",
                      clip_for_message(YAML::Dump(v.node)), "'");
         for (const YAML::Node& item : v.node) {
           const std::string k = "mlp_only_layers entry";
           r->mlp_only_layers.push_back(Value{item, k, v.where}.integer(0));
         }
       },
       [](const Recipe& r) {
         std::string s = "[";
         for (size_t i = 0; i < r.mlp_only_layers.size(); ++i) s += (i ? ", " : "") + std::to_string(r.mlp_only_layers[i]);
         return s + "]";
       }},
      {"decoder_sparse_step", [](Recipe* r, const Value& v) { r->decoder_sparse_step = v.integer(1); },
       [](const Recipe& r) { return std::to_string(r.decoder_sparse_step); }},
      {"router_aux_loss_coef",
       [](Recipe* r, const Value& v) {
         r->router_aux_loss_coef = v.number();
         MOEKIT_CHECK(r->router_aux_loss_coef >= 0, v.where, ": router_aux_loss_coef must be >= 0, got ", v.text());
       },
       [](const Recipe& r) { return num(r.router_aux_loss_coef); }},
      {"seed", [](Recipe* r, const Value& v) { r->seed = v.as<uint64_t>("a non-negative integer"); },
       [](const Recipe& r) { return std::to_string(r.seed); }},
      {"dtype",
       [](Recipe* r, const Value& v) {
         const std::string s = v.text();
         DType t;
         try {
           t = dtype_parse(s);
         } catch (const Error&) {
           t = DType::kI32;
         }
         MOEKIT_CHECK(dtype_is_float(t), v.where, ": dtype must be bf16, fp16 or fp32, got '", s, "'");
         r->dtype = t;
       },
       [](const Recipe& r) {
         return std::string(r.dtype == DType::kBF16 ? "bf16" : r.dtype == DType::kF16 ? "fp16" : "fp32");
       }},
      {"max_shard_size", [](Recipe* r, const Value& v) { r->max_shard_size = parse_byte_size(v.text(), v.where + ": max_shard_size"); },
       [](const Recipe& r) { return std::to_string(r.max_shard_size); }},
  };
  return kKeys;
}

const Key* find_key(const std::string& name) {
  for (const Key& k : keys())
    if (name == k.name) return &k;
  return nullptr;
}

std::string known_keys() {
  std::string s;
  for (const Key& k : keys()) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

ParseLimits recipe_limits() {
  ParseLimits l;
  l.max_bytes = size_t{1} << 20;
  return l;
}

void set_key(Recipe* r, const std::string& key, const YAML::Node& node, const std::string& where) {
  const Key* k = find_key(key);
  MOEKIT_CHECK(k != nullptr, where, ": unknown recipe key '", key, "' (known keys: ", known_keys(), ")");
  k->read(r, Value{node, key, where});
}

}  // namespace

const char* mode_name(UpcycleMode m) { return choice_name(m, choices(m)); }

const char* scaling_name(Scaling s) {
  switch (s) {
    case Scaling::kNone: return "none";
    case Scaling::kAuto: return "auto";
    case Scaling::kNvidia: return "nvidia";
    case Scaling::kFactor: return "factor";
  }
  return "?";
}

uint64_t parse_byte_size(const std::string& text, const std::string& what) {
  std::string s;
  for (char c : text)
    if (c != ' ') s += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string number = s.substr(0, i), unit = s.substr(i);
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
      {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  double mult = 0;
  for (const auto& [u, m] : kUnits)
    if (unit == u) mult = m;
  double v = 0;
  std::istringstream is(number);
  is.imbue(std::locale::classic());
  const bool parsed = !number.empty() && (is >> v) && is.eof();
  MOEKIT_CHECK(parsed && mult > 0 && v * mult >= 1 && v * mult < 1.8e19, what, ": '", text,
               "' is not a byte size (a positive number of bytes, or with a unit: KB, MB, GB, TB, KiB, MiB, GiB)");
  return static_cast<uint64_t>(std::llround(v * mult));
}

Recipe recipe_from_yaml_text(const std::string& text, const std::string& where) {
  const YAML::Node node = parse_yaml(text, where, recipe_limits());
  MOEKIT_CHECK(node.IsDefined() && !node.IsNull(), where, ": recipe is empty");
  MOEKIT_CHECK(node.IsMap(), where, ": recipe must be a mapping of keys to values");
  Recipe r;
  r.source = where;
  std::set<std::string> seen;
  for (const auto& kv : node) {
    MOEKIT_CHECK(kv.first.IsScalar(), where, ": recipe keys must be plain names");
    const std::string key = kv.first.Scalar();
    MOEKIT_CHECK(seen.insert(key).second, where, ": recipe key '", key, "' appears twice");
    set_key(&r, key, kv.second, where);
  }
  return r;
}

Recipe load_recipe(const std::string& path) {
  return recipe_from_yaml_text(read_file_bounded(path, recipe_limits().max_bytes, "recipe"), path);
}

void recipe_set(Recipe* r, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  MOEKIT_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment, "': expected key=value");
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  const std::string where = "--set " + assignment;
  set_key(r, key, parse_yaml(value, where, recipe_limits()), where);
}

std::vector<std::string> recipe_keys() {
  std::vector<std::string> out;
  for (const Key& k : keys()) out.push_back(k.name);
  return out;
}

std::string recipe_to_yaml(const Recipe& r) {
  std::string out = "# moekit upcycle recipe, resolved (every key; see docs/UPCYCLE.md)\n";
  for (const Key& k : keys()) out += std::string(k.name) + ": " + k.write(r) + "\n";
  return out;
}

}  // namespace moekit::upcycle

namespace moekit::upcycle {

void resolve_recipe(Recipe* r, const config::ModelConfig& dense) {
  const std::string& w = r->source;
  MOEKIT_CHECK(dense.model_type == "qwen2", w, ": the dense model is ", dense.model_type,
               "; upcycling needs a dense Qwen model (qwen2 or the original qwen layout)");
  const int64_t h_ffn = dense.intermediate_size;
  MOEKIT_CHECK(r->num_experts >= 1, w, ": num_experts (routed experts) is required and must be >= 1");
  MOEKIT_CHECK(r->num_experts_per_tok >= 1, w, ": num_experts_per_tok (top-k) is required and must be >= 1");
  MOEKIT_CHECK(r->num_experts_per_tok <= r->num_experts, w, ": num_experts_per_tok (", r->num_experts_per_tok,
               ") must not exceed num_experts (", r->num_experts, ")");
  const int64_t h_e = r->expert_intermediate_size;
  switch (r->mode) {
    case UpcycleMode::kQwen:
      MOEKIT_CHECK(h_e > 0, w, ": expert_intermediate_size is required in qwen mode (the width h_E of each "
                   "fine-grained expert; the dense FFN is ", h_ffn, " wide)");
      if (!r->reinit_ratio) r->reinit_ratio = 0.5;
      if (!r->output_scaling) r->output_scaling = Scaling::kNone;
      MOEKIT_CHECK(r->scaling() == Scaling::kNone || r->scaling() == Scaling::kFactor, w, ": output_scaling '",
                   scaling_name(r->scaling()), "' needs a function-preserving mode (copy or virtual_group); qwen "
                   "mode's shuffled chunks cannot reproduce the dense FFN: use none or a number");
      break;
    case UpcycleMode::kCopy:
      if (h_e == 0) r->expert_intermediate_size = h_ffn;
      MOEKIT_CHECK(r->expert_intermediate_size == h_ffn, w, ": expert_intermediate_size (", h_e,
                   ") must equal the dense intermediate_size (", h_ffn, ") in copy mode: every expert is a whole "
                   "copy of the FFN (use mode qwen or virtual_group for narrower experts)");
      if (!r->reinit_ratio) r->reinit_ratio = 0.0;
      if (!r->output_scaling) r->output_scaling = Scaling::kAuto;
      break;
    case UpcycleMode::kVirtualGroup: {
      MOEKIT_CHECK(h_e > 0, w, ": expert_intermediate_size is required in virtual_group mode (a divisor of the "
                   "dense intermediate_size ", h_ffn, ")");
      MOEKIT_CHECK(h_ffn % h_e == 0, w, ": expert_intermediate_size (", h_e, ") must divide the dense "
                   "intermediate_size (", h_ffn, ") in virtual_group mode (each expert is one dense shard); "
                   "mode qwen accepts any width");
      const int64_t g = h_ffn / h_e;
      MOEKIT_CHECK(r->num_experts % g == 0, w, ": num_experts (", r->num_experts, ") must be a multiple of the "
                   "granularity G = intermediate_size / expert_intermediate_size = ", g,
                   " in virtual_group mode (each virtual group holds all G shards)");
      if (r->num_experts_per_tok % g != 0)
        log_warn(w, ": num_experts_per_tok (", r->num_experts_per_tok, ") is not a multiple of the granularity ", g,
                 ": top-k cannot select whole virtual groups, so the upcycled model will not reproduce the dense one");
      if (!r->reinit_ratio) r->reinit_ratio = 0.0;
      if (!r->output_scaling) r->output_scaling = Scaling::kAuto;
      break;
    }
  }
  MOEKIT_CHECK(r->ratio() >= 0 && r->ratio() <= 1, w, ": reinit_ratio must be in [0, 1], got ", r->ratio());
  if (r->router_init_std == 0) r->router_init_std = dense.initializer_range;
  std::set<int64_t> seen;
  for (int64_t l : r->mlp_only_layers) {
    MOEKIT_CHECK(l >= 0 && l < dense.num_hidden_layers, w, ": mlp_only_layers entry ", l,
                 " is outside [0, num_hidden_layers (", dense.num_hidden_layers, ")) of the dense model");
    MOEKIT_CHECK(seen.insert(l).second, w, ": mlp_only_layers lists layer ", l, " twice");
  }
  const config::ModelConfig moe = moe_config(*r, dense);
  MOEKIT_CHECK(moe.num_sparse_layers() > 0, w, ": no layer would become an MoE layer (decoder_sparse_step ",
               r->decoder_sparse_step, ", mlp_only_layers ", find_key("mlp_only_layers")->write(*r), ", ", dense.num_hidden_layers,
               " layers)");
  try {
    moe.validate();
  } catch (const Error& e) {
    throw Error(w + ": the upcycled model config would be invalid: " + e.what());
  }
}

config::ModelConfig moe_config(const Recipe& r, const config::ModelConfig& dense) {
  config::ModelConfig c = dense;
  c.model_type = "qwen2_moe";
  c.num_experts = r.num_experts;
  c.num_experts_per_tok = r.num_experts_per_tok;
  c.moe_intermediate_size = r.expert_intermediate_size;
  c.shared_expert_intermediate_size = r.num_shared_experts * r.expert_intermediate_size;
  c.norm_topk_prob = r.norm_topk_prob;
  c.decoder_sparse_step = r.decoder_sparse_step;
  c.mlp_only_layers = r.mlp_only_layers;
  c.router_aux_loss_coef = r.router_aux_loss_coef;
  c.output_router_logits = false;
  c.torch_dtype = r.dtype == DType::kBF16 ? "bfloat16" : r.dtype == DType::kF16 ? "float16" : "float32";
  return c;
}

}  // namespace moekit::upcycle
