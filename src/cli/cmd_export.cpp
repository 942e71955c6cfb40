// moekit export: an HDF5 training checkpoint -> an HF directory (config.json,
// generation_config.json, safetensors shards), as the upcycler writes them, plus the tokenizer
// files of the run's source model (checkpoint/tokenizer_files.h). The generation config is the
// one the run's HF source had (kept in the checkpoint's meta.json), else generated.
#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/tokenizer_files.h"
#include "cli/commands.h"
#include "core/log.h"
#include "train/model_io.h"

namespace moekit::cli {

void add_export_command(CLI::App& root, std::vector<Command>* out) {
  struct Opts {
    std::string checkpoint, out, dtype = "bf16", tokenizer;
    double max_shard_gb = 5.0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = root.add_subcommand(
      "export", "Export a training checkpoint (fp32 master weights) as an HF directory that transformers loads; "
                "generation_config.json is the run's HF source's (init_from / model directory), else generated");
  app->add_option("--checkpoint", o->checkpoint,
                  "RUN_DIR/checkpoints/step_N, or a run directory (its latest checkpoint)")
      ->required();
  app->add_option("--out", o->out, "Output HF directory (must not exist)")->required();
  app->add_option("--dtype", o->dtype, "Weights on disk: bf16 (default), fp16 or fp32")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  app->add_option("--max-shard-gb", o->max_shard_gb, "Largest safetensors shard in GB (default 5)");
  app->add_option("--tokenizer", o->tokenizer,
                  "Tokenizer files to carry (a directory, qwen.tiktoken or tokenizer.json; default: those of the "
                  "run's init_from or model directory)");
  out->push_back({app, [o]() {
                    int64_t step = 0;
                    std::string generation_config;
                    // Resolved once: for a run directory that verifies the newest checkpoint (every byte).
                    const std::string dir = train::resolve_checkpoint_dir(o->checkpoint);
                    const auto m = train::load_checkpoint_model(dir, &step, &generation_config);
                    const DType dt = o->dtype == "fp32" ? DType::kF32 : o->dtype == "fp16" ? DType::kF16 : DType::kBF16;
                    MOEKIT_CHECK(o->max_shard_gb > 0, "--max-shard-gb must be > 0");
                    const auto tok = checkpoint::ExportTokenizer::for_checkpoint(dir, o->tokenizer);
                    checkpoint::save_hf_model(*m, o->out, dt, static_cast<uint64_t>(o->max_shard_gb * 1e9),
                                              generation_config);
                    tok.write_into(o->out);
                    log_info("export: ", o->checkpoint, " (step ", step, ") -> ", o->out, " (", o->dtype,
                             "); generation_config.json ",
                             generation_config.empty() ? "generated from the model config (the run had no HF source)"
                                                       : "as the run's HF source had it",
                             "; tokenizer: ", tok.describe());
                    const std::string no_gguf = checkpoint::gguf_incompatibility(m->config());
                    if (!no_gguf.empty()) log_warn("export: ", o->out, ": ", no_gguf);
                    return 0;
                  }});
}

}  // namespace moekit::cli
