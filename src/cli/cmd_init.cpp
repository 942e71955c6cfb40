// moekit init: a randomly initialised HF checkpoint of a model config (for tests, demos and
// training from scratch elsewhere). Init is HF-style and layout-independent: N(0, std) per
// tensor from the counter RNG keyed by (seed, name), biases 0, norm weights 1.
#include "checkpoint/hf_checkpoint.h"
#include "cli/commands.h"
#include "core/log.h"

namespace moekit::cli {

void add_init_command(CLI::App& root, std::vector<Command>* out) {
  struct Opts {
    std::string model, out_dir, dtype = "bf16";
    uint64_t seed = 1234;
    double std = -1;
    std::vector<std::string> sets;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = root.add_subcommand("init", "Write a randomly initialised HF checkpoint for a model config");
  app->add_option("--model", o->model, "Model config: YAML (configs/models/*.yaml), config.json or HF directory")
      ->required();
  app->add_option("--out", o->out_dir, "Output directory (must not exist or be empty)")->required();
  app->add_option("--seed", o->seed, "RNG seed")->capture_default_str();
  app->add_option("--std", o->std, "Init std for weights (default: initializer_range of the config)");
  app->add_option("--dtype", o->dtype, "Tensor dtype on disk: bf16, f16 or f32")->capture_default_str();
  app->add_option("--set", o->sets, "Override a model config field: key=value (repeatable)");
  out->push_back({app, [o]() {
                    config::ModelConfig cfg = config::load_model_config(o->model);
                    for (const auto& kv : o->sets) {
                      auto eq = kv.find('=');
                      MOEKIT_CHECK(eq != std::string::npos, "--set '", kv, "': expected key=value");
                      config::model_config_set(&cfg, kv.substr(0, eq), kv.substr(eq + 1));
                    }
                    cfg.validate();
                    model::Model m(cfg);
                    const double std = o->std > 0 ? o->std : cfg.initializer_range;
                    m.params().init(o->seed, std);
                    DType dt = dtype_parse(o->dtype);
                    log_info("init: ", cfg.model_type, " with ", m.params().numel(), " parameters (seed ", o->seed,
                             ", std ", std, ") -> ", o->out_dir, " [", dtype_name(dt), "]");
                    checkpoint::save_hf_model(m, o->out_dir, dt);
                    return 0;
                  }});
}

}  // namespace moekit::cli
