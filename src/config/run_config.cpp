#include "config/run_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/checked.h"

namespace moekit::config {

namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxSteps = int64_t{1} << 40;

// Reads the keys of one mapping; every key must be consumed, so typos are errors.
class Section {
 public:
  Section(const YAML::Node& node, std::string path, std::string where)
      : node_(node), path_(std::move(path)), where_(std::move(where)) {
    MOEKIT_CHECK(!node_ || node_.IsNull() || node_.IsMap(), where_, ": '", path_.empty() ? "<top>" : path_,
                 "' must be a mapping");
  }
  template <typename T>
  void get(const char* key, T* out) {
    seen_.insert(key);
    if (!node_ || !node_.IsMap() || !node_[key] || node_[key].IsNull()) return;
    try {
      *out = node_[key].as<T>();
    } catch (const YAML::Exception&) {
      MOEKIT_FAIL(where_, ": '", full(key), "' has an invalid value '", clip_for_message(YAML::Dump(node_[key])), "'");
    }
  }
  YAML::Node child(const char* key) {
    seen_.insert(key);
    return node_ && node_.IsMap() ? node_[key] : YAML::Node();
  }
  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const std::string k = kv.first.as<std::string>();
      MOEKIT_CHECK(seen_.count(k), where_, ": unknown key '", full(k.c_str()), "'");
    }
  }
  std::string full(const char* key) const { return path_.empty() ? key : path_ + "." + key; }

 private:
  YAML::Node node_;
  std::string path_, where_;
  std::set<std::string> seen_;
};

// data.eos_id: auto (the model's eos_token_id), none, or a token id.
int64_t resolve_eos_id(const std::string& text, const ModelConfig& model, const std::string& where) {
  if (text == "auto") return model.eos_token_id;
  if (text == "none") return DataConfig::kEosNone;
  int64_t id = 0;
  std::istringstream is(text);
  is >> id;
  MOEKIT_CHECK(!is.fail() && is.eof() && id >= 0, where, ": data.eos_id '", text,
               "' must be auto (the model's eos_token_id), none or a token id >= 0");
  return id;
}

}  // namespace

void yaml_set_path(YAML::Node* root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  MOEKIT_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment, "': expected key.path=value");
  const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  std::vector<std::string> keys;
  std::stringstream ss(path);
  for (std::string k; std::getline(ss, k, '.');) {
    MOEKIT_CHECK(!k.empty(), "--set '", assignment, "': empty key in path");
    keys.push_back(k);
  }
  // yaml-cpp nodes are handles: walk with copies, assigning into the tree at the end.
  const YAML::Node parsed = parse_yaml(value, "--set " + clip_for_message(assignment));
  std::function<void(YAML::Node, size_t)> walk = [&](YAML::Node node, size_t i) {
    if (i + 1 == keys.size()) {
      node[keys[i]] = parsed;
      return;
    }
    if (!node[keys[i]] || !node[keys[i]].IsMap()) node[keys[i]] = YAML::Node(YAML::NodeType::Map);
    walk(node[keys[i]], i + 1);
  };
  if (!root->IsDefined() || root->IsNull()) *root = YAML::Node(YAML::NodeType::Map);
  walk(*root, 0);
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  MOEKIT_CHECK(fs::is_regular_file(path), "run config '", path, "' does not exist");
  ParseLimits limits;
  limits.max_bytes = size_t{1} << 20;  // a run config is a few hundred bytes
  YAML::Node root = load_yaml_file(path, limits);
  for (const auto& o : overrides) yaml_set_path(&root, o);
  RunConfig c;
  c.source = path;
  Section top(root, "", path);
  top.get("run_dir", &c.run_dir);
  top.get("seed", &c.seed);
  top.get("model", &c.model);
  top.get("init_from", &c.init_from);
  top.get("resume", &c.resume);

  Section data(top.child("data"), "data", path);
  data.get("train", &c.data.train);
  data.get("synth", &c.data.synth);
  data.get("synth_tokens", &c.data.synth_tokens);
  data.get("synth_seed", &c.data.synth_seed);
  data.get("valid_fraction", &c.data.valid_fraction);
  std::string eos = "auto";
  data.get("eos_id", &eos);
  data.finish();

  Section tr(top.child("train"), "train", path);
  tr.get("steps", &c.train.steps);
  tr.get("seq_len", &c.train.seq_len);
  tr.get("micro_batch_size", &c.train.micro_batch_size);
  tr.get("global_batch_size", &c.train.global_batch_size);
  tr.get("log_every", &c.train.log_every);
  tr.get("eval_every", &c.train.eval_every);
  tr.get("eval_batches", &c.train.eval_batches);
  tr.get("peak_flops", &c.train.peak_flops);
  tr.get("device", &c.train.device);
  tr.finish();

  Section loss(top.child("loss"), "loss", path);
  loss.get("aux", &c.loss.aux);
  loss.get("aux_coef", &c.loss.aux_coef);
  loss.get("z_coef", &c.loss.z_coef);
  loss.finish();

  Section moe(top.child("moe"), "moe", path);
  moe.get("capacity_factor", &c.moe.capacity_factor);
  moe.get("router_bias_update_rate", &c.moe.router_bias_update_rate);
  moe.finish();

  Section ck(top.child("checkpoint"), "checkpoint", path);
  ck.get("every", &c.checkpoint.every);
  ck.get("keep", &c.checkpoint.keep);
  ck.get("final", &c.checkpoint.final);
  ck.finish();

  Section par(top.child("parallel"), "parallel", path);
  par.get("ep", &c.parallel.ep);
  par.get("zero1", &c.parallel.zero1);
  par.get("timeout", &c.parallel.timeout);
  par.get("step_timeout", &c.parallel.step_timeout);
  par.get("timeout_steps", &c.parallel.timeout_steps);
  par.finish();

  YAML::Node optim = top.child("optim");
  c.optim_yaml = optim && !optim.IsNull() ? YAML::Dump(optim) : "{}";
  top.finish();

  MOEKIT_CHECK(!c.model.empty(), path, ": 'model' is required (a model config YAML or an HF directory)");
  try {
    c.model_config = load_model_config(c.model);
  } catch (const Error& e) {
    MOEKIT_FAIL(path, ": model '", c.model, "': ", e.what());
  }
  c.data.eos_id = resolve_eos_id(eos, c.model_config, path);
  c.validate(0);  // the world size is known only to the trainer, which validates again
  return c;
}

void RunConfig::validate(int world_size) const {
  const std::string& w = source;
  const int64_t world = world_size > 0 ? world_size : 1;
  MOEKIT_CHECK(!run_dir.empty(), w, ": run_dir must not be empty");
  // Upper bounds before anything is sized from these: far above any real run, low enough that
  // products of them (tokens per step, steps x tokens) fit in 64 bits.
  for (const auto& [key, v, lo, hi] : {std::tuple<const char*, int64_t, int64_t, int64_t>{"train.steps", train.steps, 1, kMaxSteps},
                                       {"train.micro_batch_size", train.micro_batch_size, 1, int64_t{1} << 20},
                                       {"train.global_batch_size", train.global_batch_size, 1, int64_t{1} << 30},
                                       {"train.log_every", train.log_every, 1, kMaxSteps},
                                       {"train.eval_every", train.eval_every, 0, kMaxSteps},
                                       {"train.eval_batches", train.eval_batches, 0, int64_t{1} << 30},
                                       {"data.synth_tokens", data.synth_tokens, 0, int64_t{1} << 40},
                                       {"checkpoint.every", checkpoint.every, 0, kMaxSteps},
                                       {"checkpoint.keep", checkpoint.keep, 0, int64_t{1} << 20},
                                       {"parallel.ep", parallel.ep, 1, int64_t{1} << 14}})
    MOEKIT_CHECK(v >= lo && v <= hi, w, ": ", key, " must be in [", lo, ", ", hi, "], got ", v);
  MOEKIT_CHECK(std::isfinite(train.peak_flops) && train.peak_flops >= 0, w,
               ": train.peak_flops must be a finite number >= 0, got ", train.peak_flops);
  MOEKIT_CHECK(std::isfinite(loss.aux_coef), w, ": loss.aux_coef must be finite, got ", loss.aux_coef);
  MOEKIT_CHECK(train.seq_len > 1, w, ": train.seq_len must be > 1, got ", train.seq_len);
  MOEKIT_CHECK(train.seq_len <= model_config.max_position_embeddings, w, ": train.seq_len ", train.seq_len,
               " exceeds the model's max_position_embeddings ", model_config.max_position_embeddings);
  // The token counters (tokens per step, tokens seen at the end) must fit in 64 bits.
  checked_product({train.global_batch_size, train.seq_len, train.steps},
                  w + ": train.global_batch_size x train.seq_len x train.steps (tokens of the run)");
  MOEKIT_CHECK(train.global_batch_size % (train.micro_batch_size * world) == 0, w,
               ": train.global_batch_size ", train.global_batch_size,
               " must be a positive multiple of train.micro_batch_size ", train.micro_batch_size,
               " x data-parallel ranks ", world);
  MOEKIT_CHECK(train.device == "cpu" || train.device == "cuda", w, ": train.device '", train.device,
               "' must be cpu or cuda");
  MOEKIT_CHECK(!data.train.empty(), w, ": data.train must list at least one dataset prefix");
  MOEKIT_CHECK(data.valid_fraction >= 0 && data.valid_fraction < 1, w, ": data.valid_fraction must be in [0, 1), got ",
               data.valid_fraction);
  MOEKIT_CHECK(data.eos_id == DataConfig::kEosNone || (data.eos_id >= 0 && data.eos_id < model_config.vocab_size), w,
               ": data.eos_id ", data.eos_id, " is outside the vocabulary [0, ", model_config.vocab_size,
               ") (auto takes the model's eos_token_id ", model_config.eos_token_id, ")");
  MOEKIT_CHECK(loss.aux == "none" || loss.aux == "hf_pooled" || loss.aux == "switch" || loss.aux == "global_batch", w,
               ": loss.aux '", loss.aux, "' must be one of none, hf_pooled, switch, global_batch");
  MOEKIT_CHECK(loss.z_coef >= 0 && std::isfinite(loss.z_coef), w, ": loss.z_coef must be >= 0, got ", loss.z_coef);
  MOEKIT_CHECK(loss.z_coef == 0 || model_config.moe_router_score_function == "softmax", w,
               ": loss.z_coef needs softmax router scores (the model's moe_router_score_function is '",
               model_config.moe_router_score_function, "')");
  MOEKIT_CHECK(std::isfinite(moe.capacity_factor) && moe.capacity_factor >= 0, w,
               ": moe.capacity_factor must be >= 0 (0: dropless), got ", moe.capacity_factor);
  MOEKIT_CHECK(std::isfinite(moe.router_bias_update_rate) && moe.router_bias_update_rate >= 0, w,
               ": moe.router_bias_update_rate must be >= 0, got ", moe.router_bias_update_rate);
  MOEKIT_CHECK(parallel.timeout >= 0 && std::isfinite(parallel.timeout), w,
               ": parallel.timeout must be >= 0 seconds (0 turns the watchdog off), got ", parallel.timeout);
  MOEKIT_CHECK(parallel.step_timeout > 0 && std::isfinite(parallel.step_timeout), w,
               ": parallel.step_timeout must be > 0 seconds, got ", parallel.step_timeout);
  MOEKIT_CHECK(parallel.timeout_steps >= 1 && std::isfinite(parallel.timeout_steps), w,
               ": parallel.timeout_steps must be >= 1, got ", parallel.timeout_steps);
  MOEKIT_CHECK(!model_config.is_moe() || model_config.num_experts % parallel.ep == 0, w, ": num_experts ",
               model_config.num_experts, " is not divisible by parallel.ep ", parallel.ep);
  MOEKIT_CHECK(world_size <= 0 || world % parallel.ep == 0, w, ": world size ", world, " is not divisible by parallel.ep ", parallel.ep);
  MOEKIT_CHECK(resume == "none" || resume == "auto" || !resume.empty(), w, ": resume must be none, auto or a path");
}

std::string run_config_to_yaml(const RunConfig& c) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "run_dir" << YAML::Value << c.run_dir;
  e << YAML::Key << "seed" << YAML::Value << c.seed;
  e << YAML::Key << "model" << YAML::Value << c.model;
  e << YAML::Key << "init_from" << YAML::Value << c.init_from;
  e << YAML::Key << "resume" << YAML::Value << c.resume;
  e << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "train" << YAML::Value << YAML::Flow << c.data.train;
  e << YAML::Key << "synth" << YAML::Value << c.data.synth;
  e << YAML::Key << "synth_tokens" << YAML::Value << c.data.synth_tokens;
  e << YAML::Key << "synth_seed" << YAML::Value << c.data.synth_seed;
  e << YAML::Key << "valid_fraction" << YAML::Value << c.data.valid_fraction;
  e << YAML::Key << "eos_id" << YAML::Value;
  if (c.data.eos_id == DataConfig::kEosNone) e << "none";
  else e << c.data.eos_id;
  e << YAML::EndMap;
  e << YAML::Key << "train" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "steps" << YAML::Value << c.train.steps;
  e << YAML::Key << "seq_len" << YAML::Value << c.train.seq_len;
  e << YAML::Key << "micro_batch_size" << YAML::Value << c.train.micro_batch_size;
  e << YAML::Key << "global_batch_size" << YAML::Value << c.train.global_batch_size;
  e << YAML::Key << "log_every" << YAML::Value << c.train.log_every;
  e << YAML::Key << "eval_every" << YAML::Value << c.train.eval_every;
  e << YAML::Key << "eval_batches" << YAML::Value << c.train.eval_batches;
  e << YAML::Key << "peak_flops" << YAML::Value << c.train.peak_flops;
  e << YAML::Key << "device" << YAML::Value << c.train.device << YAML::EndMap;
  e << YAML::Key << "loss" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "aux" << YAML::Value << c.loss.aux;
  e << YAML::Key << "aux_coef" << YAML::Value << c.loss.aux_coef;
  e << YAML::Key << "z_coef" << YAML::Value << c.loss.z_coef << YAML::EndMap;
  e << YAML::Key << "moe" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "capacity_factor" << YAML::Value << c.moe.capacity_factor;
  e << YAML::Key << "router_bias_update_rate" << YAML::Value << c.moe.router_bias_update_rate << YAML::EndMap;
  e << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "every" << YAML::Value << c.checkpoint.every;
  e << YAML::Key << "keep" << YAML::Value << c.checkpoint.keep;
  e << YAML::Key << "final" << YAML::Value << c.checkpoint.final << YAML::EndMap;
  e << YAML::Key << "parallel" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "ep" << YAML::Value << c.parallel.ep;
  e << YAML::Key << "zero1" << YAML::Value << c.parallel.zero1;
  e << YAML::Key << "timeout" << YAML::Value << c.parallel.timeout;
  e << YAML::Key << "step_timeout" << YAML::Value << c.parallel.step_timeout;
  e << YAML::Key << "timeout_steps" << YAML::Value << c.parallel.timeout_steps << YAML::EndMap;
  e << YAML::Key << "optim" << YAML::Value << YAML::Load(c.optim_yaml);
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace moekit::config
