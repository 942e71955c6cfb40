#include "train/model_io.h"

#include <filesystem>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/train_checkpoint.h"
#include "core/check.h"

namespace moekit::train {

namespace fs = std::filesystem;

std::string resolve_checkpoint_dir(const std::string& path) {
  MOEKIT_CHECK(fs::is_directory(path), "'", path, "' is not a directory");
  if (fs::exists(fs::path(path) / "meta.json")) return path;
  for (const fs::path& ck : {fs::path(path) / "checkpoints", fs::path(path)}) {
    if (!fs::exists(ck / "latest")) continue;
    const std::string dir = checkpoint::resolve_resume(ck.string(), "auto");
    if (!dir.empty()) return dir;
  }
  MOEKIT_FAIL("'", path, "' is neither a checkpoint step directory (meta.json) nor a run directory ",
              "with checkpoints/latest");
}

std::unique_ptr<model::Model> load_checkpoint_model(const std::string& path, int64_t* step,
                                                    std::string* generation_config) {
  const std::string dir = resolve_checkpoint_dir(path);
  checkpoint::TrainCheckpointReader r(dir);
  MOEKIT_CHECK(r.meta().contains("model_config"), dir, "/meta.json has no model_config");
  const config::ModelConfig mc =
      config::model_config_from_hf_json(r.meta()["model_config"].dump(), dir + "/meta.json");
  auto m = std::make_unique<model::Model>(mc);
  for (const auto& s : m->params().specs()) {
    MOEKIT_CHECK(r.has("master", s.name), dir, ": no tensor '", s.name, "'");
    MOEKIT_CHECK(r.shape("master", s.name) == s.shape, dir, ": tensor '", s.name, "' has shape ",
                 shape_str(r.shape("master", s.name)), ", expected ", shape_str(s.shape));
    r.read("master", s.name, m->params().get(s.name).w);  // a CPU model: host memory
  }
  if (mc.moe_router_enable_expert_bias) {
    MOEKIT_CHECK(r.meta().contains("expert_bias"), dir, "/meta.json has no expert_bias, but the model routes with ",
                 "one (moe_router_enable_expert_bias)");
    std::vector<std::vector<float>> bias(static_cast<size_t>(mc.num_hidden_layers));
    try {
      for (int64_t l = 0; l < mc.num_hidden_layers; ++l)
        if (mc.is_sparse_layer(l))
          bias[l] = r.meta()["expert_bias"].at(model::expert_bias_name(l)).get<std::vector<float>>();
    } catch (const nlohmann::json::exception& e) {
      MOEKIT_FAIL(dir, "/meta.json: expert_bias: ", e.what());
    }
    m->set_expert_bias(bias);
  }
  if (step) *step = r.step();
  if (generation_config) {
    const auto it = r.meta().find("generation_config");
    *generation_config = it != r.meta().end() && it->is_string() ? it->get<std::string>() : "";
  }
  return m;
}

std::string run_hf_source(const config::RunConfig& cfg) {
  if (!cfg.init_from.empty()) return cfg.init_from;
  std::error_code ec;
  return fs::is_directory(cfg.model, ec) ? cfg.model : "";
}

std::unique_ptr<model::Model> load_any_model(const std::string& path) {
  if (fs::exists(fs::path(path) / "config.json")) return checkpoint::load_hf_model(path);
  MOEKIT_CHECK(fs::is_directory(path), "'", path, "' is not a directory");
  const bool is_ckpt = fs::exists(fs::path(path) / "meta.json") || fs::exists(fs::path(path) / "latest") ||
                       fs::exists(fs::path(path) / "checkpoints" / "latest");
  MOEKIT_CHECK(is_ckpt, "'", path, "' has no config.json (an HF directory) and is not a training checkpoint ",
               "(meta.json) or run directory (checkpoints/latest)");
  return load_checkpoint_model(path);
}

}  // namespace moekit::train
