// moekit upcycle: dense Qwen checkpoint + recipe -> Qwen2-MoE HF checkpoint (upcycle/).
//   moekit upcycle --config RECIPE.yaml --dense DIR --out DIR [--set key=value ...]
//                  [--verify [--verify-tokens N]] [--overwrite] [--threads N] [--io-threads N]
// The last stdout line is JSON: output, sizes, time and, with --verify, the dense and MoE
// losses and their KL on sample tokens.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "checkpoint/hf_checkpoint.h"
#include "cli/commands.h"
#include "core/log.h"
#include "upcycle/upcycler.h"
#include "upcycle/verify.h"

namespace moekit::cli {

void add_upcycle_command(CLI::App& root, std::vector<Command>* out) {
  struct Opts {
    std::string config;
    std::vector<std::string> sets;
    upcycle::UpcycleOptions run;
    bool verify = false;
    int64_t verify_tokens = 128;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = root.add_subcommand(
      "upcycle", "Turn a dense Qwen checkpoint into a Qwen2-MoE checkpoint (modes qwen, copy, virtual_group)");
  app->add_option("--config", o->config, "Upcycle recipe (YAML; see configs/upcycle/ and docs/UPCYCLE.md)")
      ->required();
  app->add_option("--dense", o->run.dense_dir, "Dense HF checkpoint directory (Qwen2 or original Qwen layout)")
      ->required();
  app->add_option("--out", o->run.out_dir, "Output directory (must not exist unless --overwrite)")->required();
  app->add_option("--set", o->sets, "Override a recipe key: key=value (repeatable)");
  app->add_flag("--verify", o->verify, "Evaluate dense and MoE on sample tokens; print both losses and their KL");
  app->add_option("--verify-tokens", o->verify_tokens, "Number of sample tokens for --verify")
      ->capture_default_str();
  app->add_flag("--overwrite", o->run.overwrite, "Replace an existing output directory (only once complete)");
  app->add_option("--threads", o->run.threads,
                  "Compute threads (default: one per core); the output is identical for any")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--io-threads", o->run.io_threads, "Threads writing finished slabs (default: 16)")
      ->check(CLI::NonNegativeNumber);
  out->push_back({app, [o]() {
                    upcycle::Recipe recipe = upcycle::load_recipe(o->config);
                    for (const auto& kv : o->sets) upcycle::recipe_set(&recipe, kv);
                    // Checked before any work: a bad count would otherwise fail after the upcycle.
                    if (o->verify) MOEKIT_CHECK(o->verify_tokens >= 2, "--verify-tokens must be >= 2");
                    const upcycle::UpcycleSummary s = upcycle::upcycle(recipe, o->run);
                    nlohmann::ordered_json j;
                    j["out"] = s.out_dir;
                    j["mode"] = upcycle::mode_name(s.recipe.mode);
                    j["tensors"] = s.tensors;
                    j["shards"] = s.shards;
                    j["bytes"] = s.bytes;
                    j["direct_io_fraction"] = s.bytes ? static_cast<double>(s.direct_bytes) / s.bytes : 0.0;
                    j["reinit_fraction"] =
                        s.expert_elements ? static_cast<double>(s.reinit_elements) / s.expert_elements : 0.0;
                    j["function_preserving"] = s.scales.function_preserving;
                    j["threads"] = s.threads;
                    j["io_threads"] = s.io_threads;
                    j["seconds"] = s.seconds;
                    j["gb_per_s"] = s.seconds > 0 ? static_cast<double>(s.bytes) / 1e9 / s.seconds : 0.0;
                    log_info("upcycle: wrote ", s.out_dir, ": ", s.tensors, " tensors, ",
                             static_cast<double>(s.bytes) / 1e9, " GB in ", s.shards, " shard(s), ", s.seconds,
                             " s");
                    const std::string no_gguf = checkpoint::gguf_incompatibility(s.moe);
                    if (!no_gguf.empty()) log_warn("upcycle: ", s.out_dir, ": ", no_gguf);
                    j["gguf_convertible"] = no_gguf.empty();
                    if (o->verify) {
                      const auto toks =
                          upcycle::verify_tokens(s.recipe.seed, s.moe.vocab_size, o->verify_tokens);
                      const upcycle::VerifyResult v = upcycle::verify_upcycle(o->run.dense_dir, s.out_dir, toks);
                      log_info("upcycle --verify on ", v.tokens, " tokens: dense loss ", v.dense_loss,
                               ", MoE loss ", v.moe_loss, ", KL(dense||MoE) ", v.kl, ", max |logit diff| ",
                               v.max_abs_logit_diff, ", top-1 agreement ", v.top1_agreement);
                      j["verify"] = {{"tokens", v.tokens},
                                     {"dense_loss", v.dense_loss},
                                     {"moe_loss", v.moe_loss},
                                     {"kl", v.kl},
                                     {"max_abs_logit_diff", v.max_abs_logit_diff},
                                     {"top1_agreement", v.top1_agreement}};
                    }
                    std::printf("%s\n", j.dump().c_str());
                    return 0;
                  }});
}

}  // namespace moekit::cli
