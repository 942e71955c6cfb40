// ModelConfig parsing, validation and HF config.json conversion. One table of fields
// (name, member, MoE-only) drives the YAML reader, --set overrides and the config.json writer,
// so a field added to the struct is added once here and every path picks it up.
#include "config/model_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <locale>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <variant>

#include "core/bounded_parse.h"
#include "core/check.h"

namespace moekit::config {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

using MemberPtr =
    std::variant<int64_t ModelConfig::*, double ModelConfig::*, bool ModelConfig::*,
                 std::string ModelConfig::*, std::vector<int64_t> ModelConfig::*>;

struct FieldSpec {
  const char* name;
  MemberPtr member;
  bool moe_only;  // written to / read from config.json only for qwen2_moe
};

const std::vector<FieldSpec>& field_specs() {
  static const std::vector<FieldSpec> kSpecs = {
      {"model_type", &ModelConfig::model_type, false},
      {"vocab_size", &ModelConfig::vocab_size, false},
      {"hidden_size", &ModelConfig::hidden_size, false},
      {"intermediate_size", &ModelConfig::intermediate_size, false},
      {"num_hidden_layers", &ModelConfig::num_hidden_layers, false},
      {"num_attention_heads", &ModelConfig::num_attention_heads, false},
      {"num_key_value_heads", &ModelConfig::num_key_value_heads, false},
      {"head_dim", &ModelConfig::head_dim, false},
      {"max_position_embeddings", &ModelConfig::max_position_embeddings, false},
      {"rope_theta", &ModelConfig::rope_theta, false},
      {"rms_norm_eps", &ModelConfig::rms_norm_eps, false},
      {"tie_word_embeddings", &ModelConfig::tie_word_embeddings, false},
      {"qkv_bias", &ModelConfig::qkv_bias, false},
      {"hidden_act", &ModelConfig::hidden_act, false},
      {"initializer_range", &ModelConfig::initializer_range, false},
      {"bos_token_id", &ModelConfig::bos_token_id, false},
      {"eos_token_id", &ModelConfig::eos_token_id, false},
      {"pad_token_id", &ModelConfig::pad_token_id, false},
      {"torch_dtype", &ModelConfig::torch_dtype, false},
      {"use_sliding_window", &ModelConfig::use_sliding_window, false},
      {"sliding_window", &ModelConfig::sliding_window, false},
      {"max_window_layers", &ModelConfig::max_window_layers, false},
      {"attention_dropout", &ModelConfig::attention_dropout, false},
      {"num_experts", &ModelConfig::num_experts, true},
      {"num_experts_per_tok", &ModelConfig::num_experts_per_tok, true},
      {"moe_intermediate_size", &ModelConfig::moe_intermediate_size, true},
      {"shared_expert_intermediate_size", &ModelConfig::shared_expert_intermediate_size, true},
      {"shared_expert_gate", &ModelConfig::shared_expert_gate, true},
      {"norm_topk_prob", &ModelConfig::norm_topk_prob, true},
      {"decoder_sparse_step", &ModelConfig::decoder_sparse_step, true},
      {"mlp_only_layers", &ModelConfig::mlp_only_layers, true},
      {"router_aux_loss_coef", &ModelConfig::router_aux_loss_coef, true},
      {"output_router_logits", &ModelConfig::output_router_logits, true},
      {"moe_router_score_function", &ModelConfig::moe_router_score_function, true},
      {"moe_router_enable_expert_bias", &ModelConfig::moe_router_enable_expert_bias, true},
  };
  return kSpecs;
}

const FieldSpec* find_spec(const std::string& key) {
  for (const FieldSpec& s : field_specs())
    if (key == s.name) return &s;
  return nullptr;
}

std::string known_keys() {
  std::string out;
  for (const FieldSpec& s : field_specs()) {
    if (!out.empty()) out += ", ";
    out += s.name;
  }
  return out;
}

// ---- string -> value (YAML scalars and --set share these, so both accept the same forms) ----

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

bool parse_int64(const std::string& text, int64_t* out) {
  std::string s = trim(text);
  if (!s.empty() && s[0] == '+') s.erase(0, 1);
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

bool parse_double(const std::string& text, double* out) {
  std::string s = trim(text);
  if (s.empty()) return false;
  // The classic locale keeps "1e-6" and "0.5" meaning the same whatever the process locale.
  std::istringstream is(s);
  is.imbue(std::locale::classic());
  double v = 0.0;
  is >> v;
  if (is.fail()) return false;
  is >> std::ws;
  if (!is.eof()) return false;  // trailing text, as in "1.5x"
  *out = v;
  return true;
}

bool parse_bool(const std::string& text, bool* out) {
  std::string s = trim(text);
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  if (s == "true" || s == "yes" || s == "on" || s == "1") { *out = true; return true; }
  if (s == "false" || s == "no" || s == "off" || s == "0") { *out = false; return true; }
  return false;
}

// "[1,3]", "1,3", "[]" and "" (empty list).
bool parse_int_list(const std::string& text, std::vector<int64_t>* out) {
  std::string s = trim(text);
  if (!s.empty() && s.front() == '[') {
    if (s.back() != ']') return false;
    s = trim(s.substr(1, s.size() - 2));
  }
  std::vector<int64_t> v;
  if (!s.empty()) {
    std::istringstream is(s);
    std::string item;
    while (std::getline(is, item, ',')) {
      int64_t x = 0;
      if (!parse_int64(item, &x)) return false;
      v.push_back(x);
    }
    if (s.back() == ',') return false;  // "1," has an empty last item
  }
  *out = std::move(v);
  return true;
}

// Set one field from its text form; `where` and the key name the source in errors.
void set_from_string(ModelConfig* c, const FieldSpec& spec, const std::string& value,
                     const std::string& where) {
  std::visit(
      [&](auto member) {
        using T = std::decay_t<decltype(c->*member)>;
        T parsed{};
        bool ok = true;
        const char* expected = "";
        if constexpr (std::is_same_v<T, int64_t>) {
          ok = parse_int64(value, &parsed);
          expected = "an integer";
        } else if constexpr (std::is_same_v<T, double>) {
          ok = parse_double(value, &parsed);
          expected = "a number";
        } else if constexpr (std::is_same_v<T, bool>) {
          ok = parse_bool(value, &parsed);
          expected = "true or false";
        } else if constexpr (std::is_same_v<T, std::string>) {
          parsed = trim(value);
        } else {
          ok = parse_int_list(value, &parsed);
          expected = "a list of integers like [1,3]";
        }
        MOEKIT_CHECK(ok, where, ": ", spec.name, " must be ", expected, ", got '", clip_for_message(value), "'");
        c->*member = std::move(parsed);
      },
      spec.member);
}

// ---- YAML ----------------------------------------------------------------------------------

void set_from_yaml(ModelConfig* c, const FieldSpec& spec, const YAML::Node& node,
                   const std::string& where) {
  const bool is_list = std::holds_alternative<std::vector<int64_t> ModelConfig::*>(spec.member);
  if (is_list) {
    auto member = std::get<std::vector<int64_t> ModelConfig::*>(spec.member);
    // HF writes mlp_only_layers: null for "none"; accept it the same way here.
    if (node.IsNull()) {
      (c->*member).clear();
      return;
    }
    MOEKIT_CHECK(node.IsSequence(), where, ": ", spec.name,
                 " must be a list of integers like [1, 3], got '", clip_for_message(YAML::Dump(node)), "'");
    std::vector<int64_t> v;
    for (const YAML::Node& item : node) {
      int64_t x = 0;
      MOEKIT_CHECK(item.IsScalar() && parse_int64(item.Scalar(), &x), where, ": ", spec.name,
                   " must be a list of integers, got element '", clip_for_message(YAML::Dump(item)), "'");
      v.push_back(x);
    }
    c->*member = std::move(v);
    return;
  }
  MOEKIT_CHECK(!node.IsNull(), where, ": ", spec.name, " has no value");
  MOEKIT_CHECK(node.IsScalar(), where, ": ", spec.name, " must be a single value, got '",
               clip_for_message(YAML::Dump(node)), "'");
  set_from_string(c, spec, node.Scalar(), where);
}

// Re-throw a validate() failure with the source in front, so the message names the file.
void validate_at(const ModelConfig& c, const std::string& where) {
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
}

// ---- HF config.json ------------------------------------------------------------------------

// Typed access to an HF config object; "absent" and null both mean "keep the default".
class JsonReader {
 public:
  JsonReader(const json& j, const std::string& where) : j_(j), where_(where) {}

  bool has(const char* key) const {
    auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }
  void require(const char* key) const {
    MOEKIT_CHECK(has(key), where_, ": required field '", key, "' is missing (model_type ",
                 json_value_or<std::string>(j_, "model_type", "?"), ")");
  }
  int64_t get_int(const char* key) const {
    return json_int(j_.at(key), where_, key, std::numeric_limits<int64_t>::min(),
                    std::numeric_limits<int64_t>::max());
  }
  double get_double(const char* key) const {
    return json_number(j_.at(key), where_, key, std::numeric_limits<double>::lowest(),
                       std::numeric_limits<double>::max());
  }
  bool get_bool(const char* key) const {
    const json& v = j_.at(key);
    MOEKIT_CHECK(v.is_boolean(), where_, ": ", key, " must be true or false, got ", clip_for_message(v.dump()));
    return v.get<bool>();
  }
  std::string get_string(const char* key) const {
    const json& v = j_.at(key);
    MOEKIT_CHECK(v.is_string(), where_, ": ", key, " must be a string, got ", clip_for_message(v.dump()));
    return v.get<std::string>();
  }
  std::vector<int64_t> get_int_list(const char* key) const {
    const json& v = j_.at(key);
    MOEKIT_CHECK(v.is_array(), where_, ": ", key, " must be a list of integers, got ", clip_for_message(v.dump()));
    std::vector<int64_t> out;
    for (const json& x : v)
      out.push_back(json_int(x, where_, std::string(key) + " element", std::numeric_limits<int64_t>::min(),
                             std::numeric_limits<int64_t>::max()));
    return out;
  }
  // Read `key` into the member named by `spec` if present.
  void read(ModelConfig* c, const FieldSpec& spec) const {
    if (!has(spec.name)) return;
    std::visit(
        [&](auto member) {
          using T = std::decay_t<decltype(c->*member)>;
          if constexpr (std::is_same_v<T, int64_t>) c->*member = get_int(spec.name);
          else if constexpr (std::is_same_v<T, double>) c->*member = get_double(spec.name);
          else if constexpr (std::is_same_v<T, bool>) c->*member = get_bool(spec.name);
          else if constexpr (std::is_same_v<T, std::string>) c->*member = get_string(spec.name);
          else c->*member = get_int_list(spec.name);
        },
        spec.member);
  }

 private:
  const json& j_;
  const std::string& where_;
};

// RoPE variants other than the plain one (YaRN, dynamic NTK, mrope...) change the numerics;
// silently ignoring them would give a model that disagrees with HF, so refuse them.
void check_plain_rope(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  MOEKIT_CHECK(it->is_object(), where, ": ", key, " must be an object, got ", clip_for_message(it->dump()));
  std::string type = "default";
  for (const char* field : {"rope_type", "type"}) {  // "type" is the pre-4.40 spelling
    auto t = it->find(field);
    if (t != it->end() && t->is_string()) {
      type = t->get<std::string>();
      break;
    }
  }
  MOEKIT_CHECK(type == "default", where, ": ", key, " with rope_type '", type,
               "' is not supported (only plain RoPE with rope_theta)");
}

// Qwen2 / Qwen2-MoE: field by field, starting from transformers' Qwen2Config /
// Qwen2MoeConfig defaults so a missing optional field means what it means in HF.
ModelConfig from_qwen2_json(json j, const std::string& where) {
  JsonReader r(j, where);
  const std::string type = r.get_string("model_type");
  const bool moe = type == "qwen2_moe";

  ModelConfig c;
  c.model_type = type;
  c.rope_theta = 10000.0;
  c.sliding_window = 4096;
  c.max_window_layers = 28;
  c.max_position_embeddings = 32768;
  if (moe) {
    c.intermediate_size = 5632;
    c.num_experts = 60;
    c.num_experts_per_tok = 4;
    c.moe_intermediate_size = 1408;
    c.shared_expert_intermediate_size = 5632;
    c.shared_expert_gate = true;
    c.norm_topk_prob = false;
    c.decoder_sparse_step = 1;
    c.mlp_only_layers.clear();
    c.router_aux_loss_coef = 0.001;
    c.output_router_logits = false;
  }

  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"})
    r.require(key);
  // Qwen2Config's 22016 default is a 7B width; a dense config without its MLP width is broken.
  if (!moe) r.require("intermediate_size");

  // Shapes HF accepts that the generic reader does not: eos as a list (first id is the
  // primary one), v5's "dtype" and rope_parameters in place of torch_dtype / rope_theta.
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    if (r.has(key) && j[key].is_array()) {
      MOEKIT_CHECK(!j[key].empty(), where, ": ", key, " is an empty list");
      json first = j[key][0];
      j[key] = first;
    }
  }
  if (!r.has("torch_dtype") && r.has("dtype")) j["torch_dtype"] = j["dtype"];
  check_plain_rope(j, "rope_scaling", where);
  check_plain_rope(j, "rope_parameters", where);
  if (r.has("rope_parameters") && j["rope_parameters"].contains("rope_theta"))
    j["rope_theta"] = j["rope_parameters"]["rope_theta"];

  for (const FieldSpec& spec : field_specs()) {
    if (std::string(spec.name) == "model_type") continue;
    if (spec.moe_only && !moe) continue;  // dense: MoE fields stay at the struct defaults
    r.read(&c, spec);
  }
  // HF: num_key_value_heads=None means multi-head attention.
  if (!r.has("num_key_value_heads")) c.num_key_value_heads = c.num_attention_heads;
  // An explicit head_dim equal to hidden/heads is the implicit one; store it as 0 so the
  // config.json writer (which omits it then) round-trips.
  if (c.head_dim > 0 && c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0 &&
      c.head_dim == c.hidden_size / c.num_attention_heads)
    c.head_dim = 0;
  return c;
}

// The original Qwen (v1, remote code QWenLMHeadModel, e.g. Qwen/Qwen-1_8B) mapped onto the
// equivalent qwen2 config: same math, different names (anchors A5).
ModelConfig from_qwen_v1_json(const json& j, const std::string& where) {
  JsonReader r(j, where);
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers",
                          "num_attention_heads", "intermediate_size"})
    r.require(key);

  ModelConfig c;
  c.model_type = "qwen2";
  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.num_hidden_layers = r.get_int("num_hidden_layers");
  c.num_attention_heads = r.get_int("num_attention_heads");
  c.num_key_value_heads = c.num_attention_heads;  // v1 is plain multi-head attention

  // QWenMLP builds w1/w2 with config.intermediate_size // 2: the config value is twice the width.
  const int64_t inter = r.get_int("intermediate_size");
  MOEKIT_CHECK(inter > 0 && inter % 2 == 0, where, ": intermediate_size (", inter,
               ") of a Qwen v1 config must be positive and even (the MLP width is half of it)");
  c.intermediate_size = inter / 2;

  if (r.has("kv_channels")) {
    const int64_t kv = r.get_int("kv_channels");
    const bool implicit = c.num_attention_heads > 0 &&
                          c.hidden_size % c.num_attention_heads == 0 &&
                          kv == c.hidden_size / c.num_attention_heads;
    c.head_dim = implicit ? 0 : kv;
  } else {
    c.head_dim = 0;
  }
  c.rope_theta = r.has("rotary_emb_base") ? r.get_double("rotary_emb_base") : 10000.0;
  c.rms_norm_eps = r.has("layer_norm_epsilon") ? r.get_double("layer_norm_epsilon") : 1e-6;
  if (r.has("max_position_embeddings")) c.max_position_embeddings = r.get_int("max_position_embeddings");
  else if (r.has("seq_length")) c.max_position_embeddings = r.get_int("seq_length");
  else c.max_position_embeddings = 8192;
  c.tie_word_embeddings = r.has("tie_word_embeddings") ? r.get_bool("tie_word_embeddings") : false;
  if (r.has("initializer_range")) c.initializer_range = r.get_double("initializer_range");

  // Partial rotary would rotate only part of each head; Qwen2 rotates all of it.
  const double rotary_pct = r.has("rotary_pct") ? r.get_double("rotary_pct") : 1.0;
  MOEKIT_CHECK(rotary_pct == 1.0, where, ": rotary_pct (", rotary_pct,
               ") must be 1.0; partial rotary embeddings have no Qwen2 equivalent");
  // no_bias=false would put biases on c_proj and the MLP, which Qwen2 does not have.
  if (r.has("no_bias"))
    MOEKIT_CHECK(r.get_bool("no_bias"), where,
                 ": no_bias is false; MLP and output-projection biases have no Qwen2 equivalent");
  // use_dynamic_ntk / use_logn_attn only act past seq_length at inference time; ignored.

  c.qkv_bias = true;  // c_attn has a bias
  c.hidden_act = "silu";
  c.bos_token_id = 151643;  // <|endoftext|> of the Qwen tokenizer; v1 configs do not carry it
  c.eos_token_id = 151643;
  c.torch_dtype = "bfloat16";
  if (r.has("fp32") && r.get_bool("fp32")) c.torch_dtype = "float32";
  if (r.has("fp16") && r.get_bool("fp16")) c.torch_dtype = "float16";
  if (r.has("bf16") && r.get_bool("bf16")) c.torch_dtype = "bfloat16";
  c.use_sliding_window = false;
  c.sliding_window = 4096;
  c.max_window_layers = 28;
  c.attention_dropout = 0.0;
  return c;
}

std::string lower_ext(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return e;
}

ParseLimits config_limits(const char* what) {
  ParseLimits l;
  l.max_bytes = size_t{1} << 20;  // a config.json is ~1 KB
  l.what = what;
  return l;
}

std::string read_text_file(const fs::path& p) {
  return read_file_bounded(p.string(), config_limits("model config").max_bytes, "model config");
}

// Upper bounds far above any released model (Qwen2-72B: hidden 8192, 80 layers, FFN 29568,
// vocab 152064; DeepSeek-V3: 256 routed experts, 61 layers) yet low enough that every product of
// a few of them fits in 64 bits and no loop over one runs for long. docs/MODEL.md lists them.
struct SizeBound {
  const char* name;
  int64_t ModelConfig::*member;
  int64_t min, max;
};

const std::vector<SizeBound>& size_bounds() {
  static const std::vector<SizeBound> kBounds = {
      {"vocab_size", &ModelConfig::vocab_size, 1, int64_t{1} << 24},
      {"hidden_size", &ModelConfig::hidden_size, 1, int64_t{1} << 18},
      {"intermediate_size", &ModelConfig::intermediate_size, 0, int64_t{1} << 20},
      {"num_hidden_layers", &ModelConfig::num_hidden_layers, 1, int64_t{1} << 12},
      {"num_attention_heads", &ModelConfig::num_attention_heads, 1, int64_t{1} << 12},
      {"num_key_value_heads", &ModelConfig::num_key_value_heads, 1, int64_t{1} << 12},
      {"head_dim", &ModelConfig::head_dim, 0, int64_t{1} << 14},
      {"max_position_embeddings", &ModelConfig::max_position_embeddings, 1, int64_t{1} << 24},
      {"num_experts", &ModelConfig::num_experts, 0, int64_t{1} << 14},
      {"num_experts_per_tok", &ModelConfig::num_experts_per_tok, 0, int64_t{1} << 14},
      {"moe_intermediate_size", &ModelConfig::moe_intermediate_size, 0, int64_t{1} << 20},
      {"shared_expert_intermediate_size", &ModelConfig::shared_expert_intermediate_size, 0, int64_t{1} << 20},
      {"decoder_sparse_step", &ModelConfig::decoder_sparse_step, 0, int64_t{1} << 12},
  };
  return kBounds;
}

// 2^44 parameters (70 TB of f32 weights): beyond anything one moekit run can hold.
constexpr int64_t kMaxParameters = int64_t{1} << 44;

// More than the parameter count (every layer counted with both its dense MLP and its experts),
// exact in 128 bits for fields within size_bounds(): a cheap guard before anything allocates.
unsigned __int128 parameter_upper_bound(const ModelConfig& c) {
  using U = unsigned __int128;
  const U H = static_cast<U>(c.hidden_size), V = static_cast<U>(c.vocab_size);
  const U d = static_cast<U>(c.head_dim > 0 ? c.head_dim : c.hidden_size);
  const U attn = (static_cast<U>(c.num_attention_heads) + 2 * static_cast<U>(c.num_key_value_heads)) * d * (H + 1) +
                 static_cast<U>(c.num_attention_heads) * d * H;
  const U ffn = 3 * H *
                (static_cast<U>(c.intermediate_size) +
                 static_cast<U>(c.num_experts) * static_cast<U>(c.moe_intermediate_size) +
                 static_cast<U>(c.shared_expert_intermediate_size) + 1) +
                static_cast<U>(c.num_experts) * H;
  return 2 * V * H + static_cast<U>(c.num_hidden_layers) * (attn + ffn + 2 * H) + H;
}

}  // namespace

// ---- ModelConfig members -------------------------------------------------------------------

bool ModelConfig::is_sparse_layer(int64_t layer) const {
  if (!is_moe() || decoder_sparse_step <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end())
    return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

int64_t ModelConfig::num_sparse_layers() const {
  int64_t n = 0;
  for (int64_t i = 0; i < num_hidden_layers; ++i) n += is_sparse_layer(i) ? 1 : 0;
  return n;
}

void ModelConfig::validate() const {
  MOEKIT_CHECK(model_type == "qwen2" || model_type == "qwen2_moe", "model_type '", model_type,
               "' is not supported (expected qwen2 or qwen2_moe)");
  // Ranges first (the lower bounds are the positivity checks), before anything loops over a
  // field or multiplies two of them.
  for (const SizeBound& b : size_bounds())
    MOEKIT_CHECK(this->*b.member >= b.min && this->*b.member <= b.max, b.name, " (", this->*b.member,
                 ") is out of range [", b.min, ", ", b.max, "]");
  const unsigned __int128 params = parameter_upper_bound(*this);
  MOEKIT_CHECK(params <= static_cast<unsigned __int128>(kMaxParameters), "the model would have about ",
               static_cast<double>(params), " parameters, more than moekit's limit of ", kMaxParameters,
               " (check vocab_size, hidden_size, num_hidden_layers and the FFN / expert widths)");
  MOEKIT_CHECK(pad_token_id >= -1 && pad_token_id < vocab_size, "pad_token_id (", pad_token_id,
               ") must be in [0, vocab_size ", vocab_size, "), or -1 for none");
  if (head_dim == 0)
    MOEKIT_CHECK(hidden_size % num_attention_heads == 0, "hidden_size (", hidden_size,
                 ") must be divisible by num_attention_heads (", num_attention_heads,
                 ") when head_dim is not set");
  // GQA shares each kv head between heads/kv query heads, so the split must be exact.
  MOEKIT_CHECK(num_attention_heads % num_key_value_heads == 0, "num_attention_heads (",
               num_attention_heads, ") must be divisible by num_key_value_heads (",
               num_key_value_heads, ")");
  // rotate-half RoPE pairs element i with i + d/2.
  MOEKIT_CHECK(head_size() % 2 == 0, "head_dim (head size ", head_size(),
               ", from hidden_size ", hidden_size, " / num_attention_heads ", num_attention_heads,
               " or head_dim) must be even for RoPE");
  // Comparisons written so that NaN fails them too.
  MOEKIT_CHECK(rms_norm_eps > 0 && std::isfinite(rms_norm_eps), "rms_norm_eps (", rms_norm_eps,
               ") must be positive and finite");
  MOEKIT_CHECK(rope_theta > 0 && std::isfinite(rope_theta), "rope_theta (", rope_theta,
               ") must be positive and finite");
  MOEKIT_CHECK(initializer_range >= 0 && std::isfinite(initializer_range), "initializer_range (",
               initializer_range, ") must be non-negative and finite");
  MOEKIT_CHECK(attention_dropout >= 0 && attention_dropout < 1, "attention_dropout (",
               attention_dropout, ") must be in [0, 1)");
  MOEKIT_CHECK(hidden_act == "silu", "hidden_act '", hidden_act,
               "' is not supported (Qwen2 uses silu)");
  MOEKIT_CHECK(torch_dtype == "bfloat16" || torch_dtype == "float16" || torch_dtype == "float32",
               "torch_dtype '", torch_dtype, "' is not supported (bfloat16, float16 or float32)");
  MOEKIT_CHECK(!use_sliding_window, "use_sliding_window: true is not supported "
               "(sliding-window attention is not implemented)");

  if (model_type == "qwen2_moe") {
    MOEKIT_CHECK(num_experts > 0, "num_experts (", num_experts, ") must be positive for qwen2_moe");
    MOEKIT_CHECK(num_experts_per_tok > 0 && num_experts_per_tok <= num_experts,
                 "num_experts_per_tok (", num_experts_per_tok, ") must be in [1, num_experts (",
                 num_experts, ")]");
    MOEKIT_CHECK(moe_intermediate_size > 0, "moe_intermediate_size (", moe_intermediate_size,
                 ") must be positive");
    MOEKIT_CHECK(shared_expert_gate || shared_expert_intermediate_size > 0,
                 "shared_expert_gate: false needs a shared expert (shared_expert_intermediate_size is 0)");
    MOEKIT_CHECK(decoder_sparse_step > 0, "decoder_sparse_step (", decoder_sparse_step,
                 ") must be positive");
    MOEKIT_CHECK(router_aux_loss_coef >= 0 && std::isfinite(router_aux_loss_coef), "router_aux_loss_coef (",
                 router_aux_loss_coef, ") must be non-negative and finite");
    MOEKIT_CHECK(moe_router_score_function == "softmax" || moe_router_score_function == "sigmoid",
                 "moe_router_score_function '", moe_router_score_function, "' must be softmax or sigmoid");
    std::set<int64_t> seen;
    for (int64_t layer : mlp_only_layers) {
      MOEKIT_CHECK(layer >= 0 && layer < num_hidden_layers, "mlp_only_layers entry ", layer,
                   " is outside [0, num_hidden_layers (", num_hidden_layers, "))");
      MOEKIT_CHECK(seen.insert(layer).second, "mlp_only_layers lists layer ", layer, " twice");
    }
  }
  // Dense layers (all of a qwen2 model; MoE layers skipped by step or mlp_only_layers) use
  // intermediate_size; a model whose every layer is sparse never reads it.
  if (num_sparse_layers() < num_hidden_layers)
    MOEKIT_CHECK(intermediate_size > 0, "intermediate_size (", intermediate_size,
                 ") must be positive: ", num_hidden_layers - num_sparse_layers(),
                 " layer(s) are dense (see decoder_sparse_step / mlp_only_layers)");
}

// ---- public functions ----------------------------------------------------------------------

ModelConfig model_config_from_yaml(const YAML::Node& node, const std::string& where) {
  MOEKIT_CHECK(node.IsDefined() && !node.IsNull(), where, ": model config is empty");
  MOEKIT_CHECK(node.IsMap(), where, ": model config must be a mapping of HF field names to values");
  ModelConfig c;
  std::set<std::string> seen;
  for (const auto& kv : node) {
    MOEKIT_CHECK(kv.first.IsScalar(), where, ": model config keys must be plain names");
    const std::string key = kv.first.Scalar();
    const FieldSpec* spec = find_spec(key);
    MOEKIT_CHECK(spec != nullptr, where, ": unknown model config key '", key,
                 "' (known keys: ", known_keys(), ")");
    MOEKIT_CHECK(seen.insert(key).second, where, ": model config key '", key, "' appears twice");
    set_from_yaml(&c, *spec, kv.second, where);
  }
  validate_at(c, where);
  return c;
}

ModelConfig model_config_from_hf_json(const std::string& json_text, const std::string& where) {
  const json j = parse_json(json_text, where, config_limits("config.json"));
  MOEKIT_CHECK(j.is_object(), where, ": config.json must be a JSON object");
  JsonReader r(j, where);
  MOEKIT_CHECK(r.has("model_type"), where, ": config.json has no model_type");
  const std::string type = r.get_string("model_type");
  ModelConfig c;
  if (type == "qwen2" || type == "qwen2_moe") c = from_qwen2_json(j, where);
  else if (type == "qwen") c = from_qwen_v1_json(j, where);
  else MOEKIT_FAIL(where, ": model_type '", type, "' is not supported (qwen2, qwen2_moe or qwen)");
  validate_at(c, where);
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  MOEKIT_CHECK(fs::exists(p, ec), "model config '", path, "' does not exist");
  if (fs::is_directory(p, ec)) {
    const fs::path cfg = p / "config.json";
    MOEKIT_CHECK(fs::is_regular_file(cfg, ec), "model directory '", path,
                 "' has no config.json");
    return model_config_from_hf_json(read_text_file(cfg), cfg.string());
  }
  const std::string ext = lower_ext(p);
  if (ext == ".json") return model_config_from_hf_json(read_text_file(p), path);
  MOEKIT_CHECK(ext == ".yaml" || ext == ".yml", "model config '", path,
               "' must be a .yaml/.yml file, a config.json or a checkpoint directory");
  return model_config_from_yaml(parse_yaml(read_text_file(p), path, config_limits("model config")), path);
}

std::string model_config_to_hf_json(const ModelConfig& c) {
  const bool moe = c.model_type == "qwen2_moe";
  // nlohmann's default object sorts keys, as transformers' to_json_string (sort_keys=True) does.
  json j;
  j["architectures"] = json::array({moe ? "Qwen2MoeForCausalLM" : "Qwen2ForCausalLM"});
  for (const FieldSpec& spec : field_specs()) {
    if (spec.moe_only && !moe) continue;
    std::visit([&](auto member) { j[spec.name] = c.*member; }, spec.member);
  }
  // head_dim only when it is not the implied hidden/heads, as HF configs do.
  const bool implied = c.head_dim == 0 ||
                       (c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0 &&
                        c.head_dim == c.hidden_size / c.num_attention_heads);
  if (implied) j.erase("head_dim");
  // transformers' Qwen2MoeConfig has no such field (its shared expert is always gated): keep
  // the written config.json identical to HF's unless the gate is off.
  if (moe && c.shared_expert_gate) j.erase("shared_expert_gate");
  if (moe && c.moe_router_score_function == "softmax") j.erase("moe_router_score_function");
  if (moe && !c.moe_router_enable_expert_bias) j.erase("moe_router_enable_expert_bias");
  if (c.pad_token_id < 0) j.erase("pad_token_id");  // unknown: HF configs then carry none
  j["transformers_version"] = kTransformersVersion;
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

void model_config_set(ModelConfig* c, const std::string& key, const std::string& value) {
  MOEKIT_CHECK(c != nullptr, "model_config_set: null config");
  const FieldSpec* spec = find_spec(key);
  MOEKIT_CHECK(spec != nullptr, "--set: unknown model config key '", key, "' (known keys: ",
               known_keys(), ")");
  // No validate() here: several overrides may be inconsistent until all are applied.
  set_from_string(c, *spec, value, "--set " + key + "=" + value);
}

}  // namespace moekit::config
