#include "checkpoint/hf_checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/finite.h"
#include "core/log.h"

namespace moekit::checkpoint {

namespace fs = std::filesystem;

HfLayout detect_layout(const SafetensorsDir& dir) {
  return dir.has("transformer.wte.weight") ? HfLayout::kQwenV1 : HfLayout::kQwen2;
}

namespace {

// Where a Qwen2 parameter lives in a Qwen v1 checkpoint: a tensor name and, for the fused
// c_attn, the row range [row0, row0 + rows) of it.
HfSource v1_source(const std::string& qwen2, int64_t hidden_q, int64_t hidden_kv) {
  static const std::map<std::string, std::string> kTop = {{"model.embed_tokens.weight", "transformer.wte.weight"},
                                                          {"model.norm.weight", "transformer.ln_f.weight"},
                                                          {"lm_head.weight", "lm_head.weight"}};
  auto it = kTop.find(qwen2);
  if (it != kTop.end()) return {it->second};
  // model.layers.N.<rest>
  const std::string pre = "model.layers.";
  MOEKIT_CHECK(qwen2.compare(0, pre.size(), pre) == 0, "no Qwen v1 equivalent for parameter '", qwen2, "'");
  size_t dot = qwen2.find('.', pre.size());
  const std::string n = qwen2.substr(pre.size(), dot - pre.size());
  const std::string rest = qwen2.substr(dot + 1);
  const std::string h = "transformer.h." + n + ".";
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm.weight", "ln_1.weight"},      {"post_attention_layernorm.weight", "ln_2.weight"},
      {"self_attn.o_proj.weight", "attn.c_proj.weight"}, {"mlp.gate_proj.weight", "mlp.w2.weight"},
      {"mlp.up_proj.weight", "mlp.w1.weight"},          {"mlp.down_proj.weight", "mlp.c_proj.weight"}};
  auto jt = kLayer.find(rest);
  if (jt != kLayer.end()) return {h + jt->second};
  // Fused c_attn: rows [q; k; v].
  for (const char* kind : {"weight", "bias"}) {
    const std::string suffix = std::string(".") + kind;
    if (rest == "self_attn.q_proj" + suffix) return {h + "attn.c_attn" + suffix, 0, true};
    if (rest == "self_attn.k_proj" + suffix) return {h + "attn.c_attn" + suffix, hidden_q, true};
    if (rest == "self_attn.v_proj" + suffix) return {h + "attn.c_attn" + suffix, hidden_q + hidden_kv, true};
  }
  MOEKIT_FAIL("no Qwen v1 equivalent for parameter '", qwen2, "'");
}

void write_text_atomic(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    MOEKIT_CHECK(f.good(), "cannot write ", tmp.string());
    f << text;
    f.flush();
    MOEKIT_CHECK(f.good(), "write failed: ", tmp.string());
  }
  fs::rename(tmp, path);
}

// The q/k/v bias tensors (name, rows) that exports of a qkv_bias: false model carry as zeros.
std::vector<std::pair<std::string, int64_t>> zero_qkv_biases(const config::ModelConfig& cfg) {
  std::vector<std::pair<std::string, int64_t>> out;
  if (cfg.qkv_bias) return out;
  const int64_t qd = cfg.num_attention_heads * cfg.head_size(), kvd = cfg.num_key_value_heads * cfg.head_size();
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    out.push_back({p + "q_proj.bias", qd});
    out.push_back({p + "k_proj.bias", kvd});
    out.push_back({p + "v_proj.bias", kvd});
  }
  return out;
}

}  // namespace

bool hf_ignorable(const std::string& name) { return name.find("rotary_emb.inv_freq") != std::string::npos; }

HfSource hf_source(HfLayout layout, const std::string& qwen2_name, const config::ModelConfig& cfg) {
  if (layout == HfLayout::kQwen2) return {qwen2_name};
  return v1_source(qwen2_name, cfg.num_attention_heads * cfg.head_size(), cfg.num_key_value_heads * cfg.head_size());
}

namespace {

// A NaN or infinity in loaded weights would only surface later as a NaN loss (and every step
// skipped): refused at load, naming the tensor.
void check_finite(const SafetensorsDir& dir, const std::string& name, const float* v, int64_t n) {
  const int64_t i = first_non_finite(v, n);
  MOEKIT_CHECK(i < 0, dir.dir(), ": tensor '", name, "': non-finite value ", i < 0 ? 0.f : v[i], " at element ", i);
}

}  // namespace

void load_hf_weights(model::Model* model, const SafetensorsDir& dir) {
  const auto& cfg = model->config();
  const HfLayout layout = detect_layout(dir);
  const int64_t qd = cfg.num_attention_heads * cfg.head_size(), kvd = cfg.num_key_value_heads * cfg.head_size();
  std::set<std::string> used;
  auto& P = model->params();
  for (const auto& spec : P.specs()) {
    if (layout == HfLayout::kQwen2) {
      MOEKIT_CHECK(dir.has(spec.name), dir.dir(), ": missing tensor '", spec.name, "' (expected shape ",
                   shape_str(spec.shape), ")");
      std::vector<float> v = dir.read_f32(spec.name, spec.shape);
      check_finite(dir, spec.name, v.data(), spec.numel());
      P.write(spec.name, v.data());
      used.insert(spec.name);
      continue;
    }
    HfSource src = v1_source(spec.name, qd, kvd);
    MOEKIT_CHECK(dir.has(src.name), dir.dir(), ": missing tensor '", src.name, "' (Qwen v1 source of '", spec.name,
                 "')");
    used.insert(src.name);
    if (!src.slice) {
      std::vector<float> v = dir.read_f32(src.name, spec.shape);
      check_finite(dir, src.name, v.data(), spec.numel());
      P.write(spec.name, v.data());
      continue;
    }
    // c_attn: weight (qd + 2 kvd, H) or bias (qd + 2 kvd); take rows [row0, row0 + spec rows).
    Shape fused = spec.shape;
    fused[0] = qd + 2 * kvd;
    std::vector<float> v = dir.read_f32(src.name, fused);
    const int64_t row = spec.shape.size() == 2 ? spec.shape[1] : 1;
    check_finite(dir, src.name, v.data() + src.row0 * row, spec.numel());
    P.write(spec.name, v.data() + src.row0 * row);
  }
  // An expert-parallel rank reads only its own experts; the other ranks' experts are expected
  // in the directory and skipped (never read).
  std::set<std::string> others;
  if (cfg.is_moe() && model->experts_held().count < cfg.num_experts)
    for (const auto& n : model::parameter_names(cfg))
      if (!P.has(n)) others.insert(n);
  // A qkv_bias: false model's export carries zero q/k/v biases (see save_hf_model); they must be
  // zero, or the directory holds a model with biases under a config that says it has none.
  for (const auto& [name, rows] : zero_qkv_biases(cfg)) {
    if (!dir.has(name)) continue;
    const std::vector<float> v = dir.read_f32(name, Shape{rows});
    const auto nz = std::find_if(v.begin(), v.end(), [](float x) { return x != 0.0f; });
    MOEKIT_CHECK(nz == v.end(), dir.dir(), ": tensor '", name, "' holds non-zero values (", *nz,
                 " at ", nz - v.begin(), ") but config.json says qkv_bias is false");
    used.insert(name);
  }
  for (const auto& name : dir.names()) {
    if (used.count(name) || hf_ignorable(name) || others.count(name)) continue;
    if (cfg.tie_word_embeddings && name == "lm_head.weight") {
      log_warn(dir.dir(), ": ignoring lm_head.weight (tie_word_embeddings is true)");
      continue;
    }
    MOEKIT_FAIL(dir.dir(), ": unexpected tensor '", name, "' for a ", cfg.model_type, " model with ",
                cfg.num_hidden_layers, " layers", cfg.is_moe() ? " and " + std::to_string(cfg.num_experts) + " experts" : "");
  }
}

void check_hf_shapes(const config::ModelConfig& cfg, const SafetensorsDir& dir) {
  model::ParamStore store;  // declared only: names and shapes, nothing allocated
  model::declare_model_params(cfg, &store);
  const HfLayout layout = detect_layout(dir);
  const int64_t qd = cfg.num_attention_heads * cfg.head_size(), kvd = cfg.num_key_value_heads * cfg.head_size();
  for (const auto& spec : store.specs()) {
    const HfSource src = hf_source(layout, spec.name, cfg);
    MOEKIT_CHECK(dir.has(src.name), dir.dir(), ": missing tensor '", src.name, "' (expected shape ",
                 shape_str(spec.shape), layout == HfLayout::kQwenV1 ? ", Qwen v1 source of '" + spec.name + "')" : ")");
    Shape want = spec.shape;
    if (src.slice) want[0] = qd + 2 * kvd;  // Qwen v1's fused c_attn: rows [q; k; v]
    const Shape& got = dir.info(src.name).shape;
    MOEKIT_CHECK(got == want, dir.dir(), ": tensor '", src.name, "' has shape ", shape_str(got), ", but ", dir.dir(),
                 "/config.json implies ", shape_str(want));
  }
}

std::unique_ptr<model::Model> load_hf_model(const std::string& dir) {
  MOEKIT_CHECK(fs::is_directory(dir), "model directory '", dir, "' does not exist or is not a directory");
  config::ModelConfig cfg = config::load_model_config(dir);
  auto st = SafetensorsDir::open(dir);
  check_hf_shapes(cfg, st);  // before the model is allocated from the config's sizes
  auto model = std::make_unique<model::Model>(cfg);
  load_hf_weights(model.get(), st);
  return model;
}

std::string generation_config_json(const config::ModelConfig& cfg) {
  nlohmann::ordered_json j;
  j["bos_token_id"] = cfg.bos_token_id;
  j["eos_token_id"] = cfg.eos_token_id;
  if (cfg.pad_token_id >= 0) j["pad_token_id"] = cfg.pad_token_id;
  j["transformers_version"] = config::kTransformersVersion;
  return j.dump(2) + "\n";
}

std::string source_generation_config(const std::string& source_dir) {
  if (source_dir.empty()) return "";
  const fs::path dir(source_dir), gen = dir / "generation_config.json", cfg = dir / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(gen, ec)) return "";
  // Qwen v1 (model_type "qwen", remote code): its generation config carries chat_format,
  // stop_words_ids and the like that Qwen2 generation does not know.
  if (fs::is_regular_file(cfg, ec)) {
    const auto j = load_json_file(cfg.string());
    if (json_value_or<std::string>(j, "model_type", "") == "qwen") return "";
  }
  ParseLimits limits;
  limits.max_bytes = size_t{1} << 20;  // a few hundred bytes in practice; it travels in meta.json
  limits.what = "generation config";
  const std::string text = read_file_bounded(gen.string(), limits.max_bytes, limits.what);
  MOEKIT_CHECK(parse_json(text, gen.string(), limits).is_object(), gen.string(),
               ": not a JSON object (a generation config is one)");
  return text;
}

void write_hf_side_files(const std::string& dir, const config::ModelConfig& cfg,
                         const std::string& generation_config) {
  config::ModelConfig c = cfg;
  if (!generation_config.empty() && c.pad_token_id < 0) {
    const auto g = try_parse_json(generation_config).value_or(nlohmann::json());
    if (g.is_object() && g.contains("pad_token_id") && g["pad_token_id"].is_number_integer()) {
      const int64_t pad = g["pad_token_id"].get<int64_t>();
      if (pad >= 0 && pad < c.vocab_size) c.pad_token_id = pad;
    }
  }
  write_text_atomic(fs::path(dir) / "config.json", config::model_config_to_hf_json(c));
  write_text_atomic(fs::path(dir) / "generation_config.json",
                    generation_config.empty() ? generation_config_json(c) : generation_config);
}

std::string gguf_incompatibility(const config::ModelConfig& cfg) {
  if (!cfg.is_moe() || cfg.num_sparse_layers() == cfg.num_hidden_layers) return "";
  std::string dense;
  int64_t n = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    if (!cfg.is_sparse_layer(l)) dense += (n++ ? ", " : "") + std::to_string(l);
  return (n == 1 ? "layer " + dense + " is" : "layers " + dense + " are") + " dense (mlp_only_layers / decoder_sparse_step " +
         std::to_string(cfg.decoder_sparse_step) +
         "): transformers and vLLM load this model, but llama.cpp's qwen2moe architecture has experts in "
         "every layer, so its convert_hf_to_gguf.py cannot convert it to GGUF";
}

void save_hf_model(const model::Model& model, const std::string& dir, DType dtype, uint64_t max_shard_bytes,
                   const std::string& generation_config) {
  MOEKIT_CHECK(dtype_is_float(dtype), "export dtype must be f32, bf16 or f16, got ", dtype_name(dtype));
  // transformers would build the sigmoid gate anyway and initialise it at random: refuse
  // rather than write a checkpoint that loads with different numerics.
  MOEKIT_CHECK(!model.config().is_moe() || model.config().shared_expert_gate, "cannot write '", dir,
               "': shared_expert_gate is false (an ungated, DeepSeekMoE-style shared expert), which "
               "transformers' Qwen2MoeForCausalLM cannot express (it always gates the shared expert)");
  // Likewise the routing variants: Qwen2-MoE routes by softmax top-k without a selection bias.
  MOEKIT_CHECK(!model.config().is_moe() || model.config().moe_router_score_function == "softmax", "cannot write '",
               dir, "': moe_router_score_function is '", model.config().moe_router_score_function,
               "', and transformers' Qwen2MoeForCausalLM routes by softmax scores only (evaluate this model with "
               "moekit eval on its checkpoint)");
  MOEKIT_CHECK(!model.config().is_moe() || !model.config().moe_router_enable_expert_bias, "cannot write '", dir,
               "': the model routes with an aux-loss-free expert bias (moe_router_enable_expert_bias), which "
               "transformers' Qwen2MoeForCausalLM has no place for: its routing would differ (evaluate this model "
               "with moekit eval on its checkpoint)");
  const fs::path out(dir);
  MOEKIT_CHECK(!fs::exists(out) || (fs::is_directory(out) && fs::is_empty(out)), "output directory '", dir,
               "' already exists and is not empty");
  fs::path tmp = out;
  tmp += ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    config::ModelConfig cfg = model.config();
    cfg.torch_dtype = dtype == DType::kF32 ? "float32" : dtype == DType::kBF16 ? "bfloat16" : "float16";
    write_hf_side_files(tmp.string(), cfg, generation_config);
    const auto& P = model.params();
    std::vector<std::vector<uint8_t>> converted;  // owns the non-f32 copies
    std::vector<TensorRef> refs;
    converted.reserve(P.specs().size() + (cfg.qkv_bias ? 0 : 3 * cfg.num_hidden_layers));
    auto add = [&](const std::string& name, const Shape& shape, const float* src) {
      const size_t n = static_cast<size_t>(shape_numel(shape));
      const void* data = src;
      if (dtype != DType::kF32) {
        converted.emplace_back(n * dtype_size(dtype));
        from_f32(converted.back().data(), dtype, src, n);
        data = converted.back().data();
      }
      refs.push_back({name, dtype, shape, data});
    };
    // The CPU model's values are host memory; a device model's come over one tensor at a time.
    std::vector<std::vector<float>> staged;
    staged.reserve(P.backend().host_memory() ? 0 : P.specs().size());
    for (const auto& s : P.specs()) {
      const float* src = P.values(s.expert) + s.offset;
      if (!P.backend().host_memory()) {
        staged.emplace_back(static_cast<size_t>(s.numel()));
        P.read(s.name, staged.back().data());
        src = staged.back().data();
      }
      add(s.name, s.shape, src);
    }
    std::vector<float> zeros;
    if (!cfg.qkv_bias) {
      const int64_t qd = cfg.num_attention_heads * cfg.head_size(), kvd = cfg.num_key_value_heads * cfg.head_size();
      zeros.assign(static_cast<size_t>(std::max(qd, kvd)), 0.0f);
      for (const auto& [name, rows] : zero_qkv_biases(cfg)) add(name, Shape{rows}, zeros.data());
    }
    write_sharded(tmp.string(), refs, max_shard_bytes);
    if (fs::exists(out)) fs::remove(out);  // empty directory
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace moekit::checkpoint
