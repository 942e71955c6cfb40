// libFuzzer target: every config moekit reads, chosen by the first byte (mod 5):
//   0 an HF config.json, 1 a model YAML, 2 a run YAML (its model: path resolved from the source
//   tree, its optim: section parsed too), 3 an upcycle recipe (resolved against the tiny dense
//   model), 4 a --set override (first line) on configs/train/tiny-moe.yaml.
// Accepted configs must survive their own round trip: what moekit writes (config.json,
// config.resolved.yaml) is read back without error, and a model config to the same config.json.
// Run from the source directory (tests/fuzz/run.sh does), so that relative paths resolve.
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <string>

#include "config/model_config.h"
#include "config/run_config.h"
#include "core/bounded_parse.h"
#include "core/check.h"
#include "fuzz_util.h"
#include "optim/optim.h"
#include "upcycle/recipe.h"

namespace {

using namespace moekit;

void model_round_trip(const config::ModelConfig& c) {
  const std::string json = config::model_config_to_hf_json(c);
  MOEKIT_FUZZ_EXPECT(config::model_config_to_hf_json(config::model_config_from_hf_json(json, "again")) == json);
}

void run_config(const std::string& path, const std::vector<std::string>& overrides) {
  const config::RunConfig c = config::load_run_config(path, overrides);
  optim::optim_config_from_yaml(parse_yaml(c.optim_yaml, "optim"), path);
  const std::string again = moekit::fuzz::scratch_dir() + "/resolved.yaml";
  moekit::fuzz::write_file(again, config::run_config_to_yaml(c));
  config::load_run_config(again);  // the resolved config a run writes must load again
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 5) {
      case 0:
        model_round_trip(config::model_config_from_hf_json(text, "config.json"));
        break;
      case 1:
        model_round_trip(config::model_config_from_yaml(parse_yaml(text, "model.yaml"), "model.yaml"));
        break;
      case 2: {
        const std::string path = moekit::fuzz::scratch_dir() + "/run.yaml";
        moekit::fuzz::write_file(path, text);
        run_config(path, {});
        break;
      }
      case 3: {
        static const config::ModelConfig kDense = config::load_model_config("configs/models/tiny-dense.yaml");
        upcycle::Recipe r = upcycle::recipe_from_yaml_text(text, "recipe.yaml");
        upcycle::resolve_recipe(&r, kDense);
        model_round_trip(upcycle::moe_config(r, kDense));
        break;
      }
      default:
        run_config("configs/train/tiny-moe.yaml", {text.substr(0, text.find('\n'))});
    }
  } catch (const moekit::Error&) {
  }
  return 0;
}
