#include "train/model_io.h"

#include <filesystem>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/train_checkpoint.h"
#include "core/check.h"
#include "core/finite.h"
#include "train/resume_check.h"

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
  // Names and shapes against the config before the model is allocated from its sizes.
  check_checkpoint_tensors(r, mc);
  auto m = std::make_unique<model::Model>(mc);
  for (const auto& s : m->params().specs()) {
    float* w = m->params().get(s.name).w;
    r.read("master", s.name, w);
    const int64_t bad = first_non_finite(w, s.numel());
    MOEKIT_CHECK(bad < 0, dir, ": master weights of tensor '", s.name, "': non-finite value ", w[bad < 0 ? 0 : bad],
                 " at element ", bad);
  }
  if (mc.moe_router_enable_expert_bias) m->set_expert_bias(read_expert_bias(r.meta(), mc, dir + "/meta.json"));
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
