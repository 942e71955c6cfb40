// moekit data tokenize | decode | convert-tokenizer: text -> Megatron token datasets with the
// Qwen tokenizer (data/tokenizer.h), and back.
//   data tokenize --tokenizer PATH --input FILES|GLOB... --out PREFIX [--format jsonl|text]:
//                 the last stdout line is JSON with the counts.
//   data decode --tokenizer PATH PREFIX: the documents as JSON lines {"text": ...}.
//   data convert-tokenizer --tokenizer PATH --out DIR: HF files (tokenizer.json, vocab.json,
//                 merges.txt, tokenizer_config.json) for any tokenizer moekit reads.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/check.h"
#include "core/log.h"
#include "data/indexed_dataset.h"
#include "data/tokenize_job.h"
#include "data/tokenizer.h"
#include "data/tokenizer_hf.h"
#include "upcycle/staging_dir.h"

namespace moekit::cli {

namespace {

const char* const kTokenizerHelp =
    "Tokenizer: a qwen.tiktoken file, a tokenizer.json, a vocab.json (with merges.txt beside it), or a "
    "directory holding one";

void add_tokenize(CLI::App* data, std::vector<Command>* out) {
  struct Opts {
    std::string tokenizer, normalize = "auto", special = "parse", eos = "<|endoftext|>";
    std::vector<std::string> inputs;
    data::TokenizeOptions job;
    bool no_eos = false;
    double max_doc_mb = 1024, chunk_kb = 1024;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = data->add_subcommand(
      "tokenize",
      "Tokenize text into a Megatron .bin/.idx dataset (multi-threaded, streaming; EOS after every document)");
  app->add_option("--tokenizer", o->tokenizer, kTokenizerHelp)->required();
  app->add_option("--input", o->inputs, "Input files or glob patterns (quoted), read in the order given")
      ->required();
  app->add_option("--format", o->job.format,
                  "jsonl: one JSON object per line, the text under --json-key; text: each file is one document")
      ->check(CLI::IsMember({"jsonl", "text"}))
      ->capture_default_str();
  app->add_option("--json-key", o->job.json_key, "The text field of each JSON line")->capture_default_str();
  app->add_option("--out", o->job.out_prefix, "Output prefix: writes PREFIX.bin and PREFIX.idx")->required();
  app->add_option("--threads", o->job.threads, "Tokenizing threads (0: one per core)")->capture_default_str();
  app->add_option("--eos", o->eos, "Token appended to every document")->capture_default_str();
  app->add_flag("--no-eos", o->no_eos, "Append nothing after documents");
  app->add_option("--normalize", o->normalize,
                  "Unicode normalization: auto (as the tokenizer files say: NFC for Qwen's), nfc or none")
      ->check(CLI::IsMember({"auto", "nfc", "none"}))
      ->capture_default_str();
  app->add_option("--special-tokens", o->special,
                  "parse: special-token strings in the text (<|endoftext|>, ...) become their ids, as tiktoken's "
                  "allowed_special=\"all\" and HF tokenizers do; text: they are tokenized as ordinary text")
      ->check(CLI::IsMember({"parse", "text"}))
      ->capture_default_str();
  app->add_option("--max-doc-mb", o->max_doc_mb,
                  "Longest JSON line (jsonl) or text stretch without a line start to cut at (text), in MB")
      ->capture_default_str();
  app->add_option("--chunk-kb", o->chunk_kb, "Unit of work handed to a thread, in KB")->capture_default_str();
  app->add_option("--progress", o->job.progress_seconds, "Seconds between progress lines (0: none)")
      ->capture_default_str();
  out->push_back({app, [o]() {
                    MOEKIT_CHECK(o->max_doc_mb > 0 && o->chunk_kb > 0 && o->chunk_kb * 1e3 <= o->max_doc_mb * 1e6,
                                 "--chunk-kb ", o->chunk_kb, " and --max-doc-mb ", o->max_doc_mb,
                                 " must be positive, the chunk no larger than the document limit");
                    MOEKIT_CHECK(o->job.threads >= 0, "--threads ", o->job.threads, " must be >= 0");
                    data::TokenizerOptions topt;
                    topt.normalization = o->normalize;
                    const auto tok = data::Tokenizer::load(o->tokenizer, topt);
                    data::TokenizeOptions job = o->job;
                    job.inputs = data::expand_input_patterns(o->inputs);
                    job.parse_special = o->special == "parse";
                    job.max_doc_bytes = static_cast<size_t>(o->max_doc_mb * 1e6);
                    job.chunk_bytes = static_cast<size_t>(o->chunk_kb * 1e3);
                    if (!o->no_eos) {
                      job.eos_id = o->eos == "<|endoftext|>" ? tok->eos_id() : tok->special_id(o->eos);
                      MOEKIT_CHECK(job.eos_id >= 0, o->tokenizer, ": has no token ", o->eos,
                                   " to end documents with (name one with --eos, or pass --no-eos)");
                    }
                    upcycle::InterruptGuard guard;  // Ctrl-C / SIGTERM: stop, remove the partial output
                    job.between_chunks = upcycle::check_interrupted;
                    log_info("data tokenize: ", job.inputs.size(), " file(s), ", data::tokenizer_format_name(tok->format()),
                             " tokenizer ", tok->path(), " (", tok->num_ids(), " ids) -> ", job.out_prefix,
                             ".{bin,idx}");
                    const data::TokenizeStats st = data::tokenize_files(*tok, job);
                    log_info("data tokenize: ", st.documents, " documents, ", st.tokens, " tokens from ", st.bytes,
                             " bytes in ", st.seconds, " s (", st.tokens / std::max(st.seconds, 1e-9), " tokens/s, ",
                             st.threads, " threads)");
                    nlohmann::json j = {{"prefix", job.out_prefix},
                                        {"files", st.files},
                                        {"documents", st.documents},
                                        {"tokens", st.tokens},
                                        {"bytes", st.bytes},
                                        {"dtype", data::token_dtype_name(st.dtype)},
                                        {"vocab_size", st.vocab_size},
                                        {"eos_id", job.eos_id},
                                        {"threads", st.threads},
                                        {"seconds", st.seconds},
                                        {"tokens_per_s", st.tokens / std::max(st.seconds, 1e-9)}};
                    std::printf("%s\n", j.dump().c_str());
                    return 0;
                  }});
}

void add_decode(CLI::App* data, std::vector<Command>* out) {
  struct Opts {
    std::string tokenizer, prefix;
    int64_t start = 0, limit = -1;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = data->add_subcommand(
      "decode", "Print the documents of a Megatron dataset as text: one JSON line {\"text\": ...} per document");
  app->add_option("--tokenizer", o->tokenizer, kTokenizerHelp)->required();
  app->add_option("prefix", o->prefix, "Megatron dataset prefix (PREFIX.bin + PREFIX.idx)")->required();
  app->add_option("--start", o->start, "First document")->capture_default_str();
  app->add_option("--limit", o->limit, "How many documents (-1: all)")->capture_default_str();
  out->push_back({app, [o]() {
                    const auto tok = data::Tokenizer::load(o->tokenizer);
                    const data::IndexedDataset ds(o->prefix);
                    MOEKIT_CHECK(o->start >= 0 && o->start <= ds.num_documents(), "--start ", o->start,
                                 " out of range [0, ", ds.num_documents(), "]");
                    const int64_t end = o->limit < 0 ? ds.num_documents()
                                                     : std::min(ds.num_documents(), o->start + o->limit);
                    std::vector<int64_t> ids;
                    std::vector<int32_t> ids32;
                    for (int64_t d = o->start; d < end; ++d) {
                      ids.resize(static_cast<size_t>(ds.document_length(d)));
                      ds.read(d, 0, static_cast<int64_t>(ids.size()), ids.data());
                      ids32.assign(ids.begin(), ids.end());
                      for (size_t i = 0; i < ids.size(); ++i)
                        MOEKIT_CHECK(ids[i] < tok->num_ids(), o->prefix, ": document ", d, " offset ", i,
                                     ": token id ", ids[i], " is not in the tokenizer (", tok->num_ids(), " ids)");
                      // Bytes that are not UTF-8 (a sequence cut inside a character) print as U+FFFD,
                      // as transformers' decode(errors="replace").
                      const nlohmann::json j = {{"text", tok->decode(ids32)}};
                      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
                    }
                    return 0;
                  }});
}

void add_convert(CLI::App* data, std::vector<Command>* out) {
  struct Opts {
    std::string tokenizer, out;
    int64_t model_max_length = 32768;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = data->add_subcommand(
      "convert-tokenizer",
      "Write a tokenizer as HF files (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json) that "
      "transformers' AutoTokenizer loads");
  app->add_option("--tokenizer", o->tokenizer, kTokenizerHelp)->required();
  app->add_option("--out", o->out, "Output directory (new or empty)")->required();
  app->add_option("--model-max-length", o->model_max_length, "tokenizer_config.json's model_max_length")
      ->capture_default_str();
  out->push_back({app, [o]() {
                    namespace fs = std::filesystem;
                    std::error_code ec;
                    MOEKIT_CHECK(!fs::exists(o->out, ec) || (fs::is_directory(o->out, ec) && fs::is_empty(o->out, ec)),
                                 "--out ", o->out, " exists and is not an empty directory");
                    const auto tok = data::Tokenizer::load(o->tokenizer);
                    const data::HfTokenizerFiles f = data::hf_tokenizer_files(*tok, o->model_max_length);
                    data::write_hf_tokenizer_files(f, o->out);
                    log_info("data convert-tokenizer: ", tok->path(), " (", data::tokenizer_format_name(tok->format()),
                             ", ", tok->num_ids(), " ids, ", f.merges, " merges) -> ", o->out);
                    return 0;
                  }});
}

}  // namespace

void add_tokenizer_subcommands(CLI::App* data, std::vector<Command>* out) {
  add_tokenize(data, out);
  add_decode(data, out);
  add_convert(data, out);
}

}  // namespace moekit::cli
