// `moekit data tokenize`: text files -> a Megatron .bin/.idx token dataset, streamed through a
// pool of tokenizing threads. The main thread reads the inputs in chunks (whole JSON lines; for
// text files, cuts at line starts where the tokenizer's pattern always ends a piece), the workers
// validate, parse and encode them, and the main thread writes the results in input order, so
// the output is byte-identical for any thread count and memory stays bounded by
// (2 x threads + 2) chunks in flight, whatever the corpus size. Any bad input stops the job with
// the file and line; the writer's temp files are then removed, so no output is left.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/file_io.h"
#include "data/tokenizer.h"

namespace moekit::data {

struct TokenizeOptions {
  std::vector<std::string> inputs;  // files, in order (expand_input_patterns)
  std::string format = "jsonl";     // jsonl: one JSON object per line; text: one document per file
  std::string json_key = "text";
  std::string out_prefix;           // writes OUT.bin and OUT.idx
  int threads = 0;                  // tokenizing threads; 0: one per core
  int32_t eos_id = -1;              // appended to every document; -1: none
  bool parse_special = true;        // special-token strings in the text become their ids
  size_t chunk_bytes = 1 << 20;     // the unit of work
  size_t max_doc_bytes = size_t{1} << 30;  // longest JSON line / text stretch without a cut point
  double progress_seconds = 10;     // a progress line this often (0: none)
  // Called by the main thread between chunks; throwing stops the job and removes its output
  // (the command passes a check for SIGINT/SIGTERM).
  std::function<void()> between_chunks;
};

struct TokenizeStats {
  int64_t files = 0, documents = 0, tokens = 0, bytes = 0;
  int threads = 0;
  double seconds = 0;
  TokenDType dtype = TokenDType::kInt32;
  int64_t vocab_size = 0;
};

// Each item is a file or a glob pattern (*, ?, [...]; matches sorted by name). Errors: a
// pattern that matches nothing, a path that is not a readable regular file.
std::vector<std::string> expand_input_patterns(const std::vector<std::string>& items);

TokenizeStats tokenize_files(const Tokenizer& tok, const TokenizeOptions& opt);

}  // namespace moekit::data
