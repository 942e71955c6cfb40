// moekit data: token dataset tools.
//   data synth   --out PREFIX --vocab V (--tokens N | --docs D) [--seed S ...]: the synthetic
//                corpus of data/synth.h as PREFIX.bin/.idx + PREFIX.synth.json; the last stdout
//                line is JSON with the counts and the entropy figures.
//   data inspect PATH...: counts, document lengths, histogram, top tokens, coverage (--json).
//   data tokenize | decode | convert-tokenizer: text <-> tokens with the Qwen tokenizer
//                (cmd_tokenize.cpp).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/bounded_parse.h"
#include "core/log.h"
#include "data/file_io.h"
#include "data/inspect.h"
#include "data/synth.h"
#include "data/token_dataset.h"

namespace moekit::cli {

namespace {

void add_synth(CLI::App* data, std::vector<Command>* out) {
  auto c = std::make_shared<data::SynthConfig>();
  auto prefix = std::make_shared<std::string>();
  CLI::App* app = data->add_subcommand("synth", "Write a deterministic synthetic corpus (Megatron .bin/.idx)");
  app->add_option("--out", *prefix, "Output prefix: writes PREFIX.bin, PREFIX.idx, PREFIX.synth.json")->required();
  app->add_option("--vocab", c->vocab_size, "Vocabulary size (token ids in [0, V))")->required();
  app->add_option("--tokens", c->num_tokens, "Generate whole documents until at least N tokens");
  app->add_option("--docs", c->num_docs, "Generate exactly D documents (instead of --tokens)");
  app->add_option("--seed", c->seed, "RNG seed")->capture_default_str();
  app->add_option("--eos-id", c->eos_id, "End-of-document token id")->capture_default_str();
  app->add_option("--copy-id", c->copy_id, "Token id that opens a copy segment")->capture_default_str();
  app->add_option("--topics", c->num_topics, "Number of topics (Markov chains)")->capture_default_str();
  app->add_option("--branching", c->branching, "Successors per context")->capture_default_str();
  app->add_option("--context-classes", c->context_classes, "Classes of the token two back (2nd-order context)")
      ->capture_default_str();
  app->add_option("--zipf", c->zipf_s, "Zipf exponent of each topic's unigram marginal")->capture_default_str();
  app->add_option("--successor-decay", c->successor_decay, "Successor j has weight (j+1)^-decay")
      ->capture_default_str();
  app->add_option("--min-doc-len", c->min_doc_len, "No EOS before this many tokens")->capture_default_str();
  app->add_option("--doc-len", c->mean_doc_len, "Mean document length (sets the EOS hazard)")->capture_default_str();
  app->add_option("--max-doc-len", c->max_doc_len, "EOS forced at this length")->capture_default_str();
  app->add_option("--copy-prob", c->copy_prob, "Per-step probability of a copy segment")->capture_default_str();
  app->add_option("--copy-min", c->copy_min, "Shortest copy segment")->capture_default_str();
  app->add_option("--copy-max", c->copy_max, "Longest copy segment")->capture_default_str();
  out->push_back({app, [c, prefix]() {
                    c->validate();
                    log_info("data synth: vocab ", c->vocab_size, ", ",
                             c->num_docs > 0 ? std::to_string(c->num_docs) + " documents"
                                             : std::to_string(c->num_tokens) + " tokens",
                             ", seed ", c->seed, " -> ", *prefix, ".{bin,idx}");
                    const auto parent = std::filesystem::path(*prefix).parent_path();
                    if (!parent.empty()) std::filesystem::create_directories(parent);  // as train's synth does
                    data::SynthStats st = data::write_synth_corpus(*prefix, *c);
                    log_info("data synth: ", st.documents, " documents, ", st.tokens, " tokens; entropy bound ",
                             st.entropy_bound, " nats/token, empirical bigram ", st.bigram_entropy, ", unigram ",
                             st.unigram_entropy, ", uniform ", st.log_vocab);
                    nlohmann::json j = data::synth_stats_to_json(st);
                    j["prefix"] = *prefix;
                    std::printf("%s\n", j.dump().c_str());
                    return 0;
                  }});
}

void add_inspect(CLI::App* data, std::vector<Command>* out) {
  struct Opts {
    std::vector<std::string> paths;
    bool json = false;
    int64_t vocab = 0;
    int top = 10;
    int64_t delimiter = data::DatasetOptions::kAuto;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = data->add_subcommand("inspect", "Statistics of token datasets (Megatron prefixes, llm.c shards)");
  app->add_option("paths", o->paths, "Megatron prefixes (PREFIX.idx + PREFIX.bin) or llm.c shard files")->required();
  app->add_flag("--json", o->json, "Print one JSON object instead of text");
  app->add_option("--vocab", o->vocab,
                  "Vocabulary size: coverage is reported and a token >= V is an error (default: from "
                  "PREFIX.synth.json when present)");
  app->add_option("--top", o->top, "How many of the most frequent tokens to list")->capture_default_str();
  app->add_option("--llmc-delimiter", o->delimiter,
                  "llm.c shards: token that starts each document (-1: the shard is one document; default: "
                  "50256 for GPT-2 shards, 128000 for Llama-3 shards)");
  out->push_back({app, [o]() {
                    data::DatasetOptions opts;
                    opts.llmc_delimiter = o->delimiter;
                    data::TokenDataset ds = data::TokenDataset::open(o->paths, opts);
                    // A synthetic corpus records its config beside it: report it and take its vocab.
                    nlohmann::json synth;
                    if (ds.num_files() == 1 && data::file_exists(ds.file(0).path + ".synth.json")) {
                      const std::string side = ds.file(0).path + ".synth.json";
                      ParseLimits limits;
                      limits.max_bytes = size_t{1} << 20;
                      synth = load_json_file(side, limits);
                      MOEKIT_CHECK(synth.is_object(), side, ": not a JSON object");
                      const nlohmann::json* cfg = synth.contains("config") ? &synth["config"] : nullptr;
                      if (o->vocab <= 0 && cfg && cfg->is_object() && cfg->contains("vocab_size"))
                        o->vocab = json_int((*cfg)["vocab_size"], side, "config.vocab_size", 1, int64_t{1} << 31);
                    }
                    data::DatasetStats st = data::compute_stats(ds, o->top, o->vocab);
                    if (o->json) {
                      nlohmann::json j = data::stats_to_json(ds, st);
                      if (!synth.is_null()) j["synth"] = synth;
                      std::printf("%s\n", j.dump().c_str());
                    } else {
                      std::printf("%s", data::stats_to_text(ds, st).c_str());
                      if (!synth.is_null() && synth.contains("stats")) {
                        const nlohmann::json& stats = synth["stats"];
                        std::printf("synthetic corpus: entropy bound %.4f nats/token (bigram %.4f, uniform %.4f)\n",
                                    json_value_or<double>(stats, "entropy_bound_nats", 0.0),
                                    json_value_or<double>(stats, "bigram_entropy_nats", 0.0),
                                    json_value_or<double>(stats, "log_vocab_nats", 0.0));
                      }
                    }
                    return 0;
                  }});
}

}  // namespace

void add_data_command(CLI::App& root, std::vector<Command>* out) {
  CLI::App* data =
      root.add_subcommand("data", "Token datasets: tokenize text, synthetic corpus, statistics, decode");
  data->require_subcommand(1);
  std::vector<Command> subs;
  add_synth(data, &subs);
  add_inspect(data, &subs);
  add_tokenizer_subcommands(data, &subs);
  out->push_back({data, [subs]() {
                    for (const auto& s : subs)
                      if (s.app->parsed()) return s.run();
                    return 1;
                  }});
}

}  // namespace moekit::cli
