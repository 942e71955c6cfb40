// moekit eval: load an HF checkpoint directory and score a token sequence. The last stdout line
// is JSON {"loss": mean CE of predicting token t+1 from tokens <= t, "aux_loss": HF pooled
// load-balancing loss or null, "tokens": N}. --logits-out writes F32 "logits" [T, vocab].
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "checkpoint/hf_checkpoint.h"
#include "cli/commands.h"
#include "core/log.h"
#include "train/model_io.h"

namespace moekit::cli {

void add_eval_command(CLI::App& root, std::vector<Command>* out) {
  struct Opts {
    std::string model, tokens, logits_out;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = root.add_subcommand("eval", "Evaluate an HF checkpoint on a token sequence (loss, aux loss, logits)");
  app->add_option("--model", o->model, "HF checkpoint directory (config.json + safetensors), or a training checkpoint step / run directory")->required();
  app->add_option("--tokens", o->tokens, "Comma-separated token ids, e.g. 1,2,3 (at least 2)")->required();
  app->add_option("--logits-out", o->logits_out, "Write the logits [T, vocab] as F32 tensor 'logits' (safetensors)");
  out->push_back({app, [o]() {
                    std::vector<int64_t> toks = parse_int_list(o->tokens, "--tokens");
                    MOEKIT_CHECK(toks.size() >= 2, "--tokens: need at least 2 tokens to score, got ", toks.size());
                    auto model = train::load_any_model(o->model);
                    const auto& cfg = model->config();
                    const int64_t T = static_cast<int64_t>(toks.size());
                    for (int64_t t = 0; t < T; ++t)
                      MOEKIT_CHECK(toks[t] >= 0 && toks[t] < cfg.vocab_size, "--tokens: token id ", toks[t],
                                   " at position ", t, " is out of range [0, ", cfg.vocab_size, ") of ", o->model);
                    std::vector<int64_t> targets(T, -1);
                    for (int64_t t = 0; t + 1 < T; ++t) targets[t] = toks[t + 1];
                    model::LossConfig lc;
                    lc.aux = model::AuxLossForm::kNone;
                    model::LossTerms r = model->forward(toks.data(), targets.data(), 1, T, lc, /*train=*/false);
                    if (!o->logits_out.empty()) {
                      const auto& lg = model->logits();
                      checkpoint::write_safetensors(o->logits_out,
                                                    {{"logits", DType::kF32, {T, cfg.vocab_size}, lg.data()}});
                    }
                    log_info("eval: ", o->model, " (", cfg.model_type, ", ", model->params().numel(),
                             " parameters) on ", T, " tokens: loss ", r.ce);
                    nlohmann::json j;
                    j["loss"] = r.ce;
                    j["aux_loss"] = std::isnan(r.aux_hf) ? nlohmann::json(nullptr) : nlohmann::json(r.aux_hf);
                    j["tokens"] = T;
                    std::printf("%s\n", j.dump().c_str());
                    return 0;
                  }});
}

}  // namespace moekit::cli
