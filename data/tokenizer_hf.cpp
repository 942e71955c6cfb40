// HF tokenizer files from a loaded tokenizer. The vocabulary and merge lists are written by hand
// (150k entries each, in id and priority order); the small sections through nlohmann::json.
#include "data/tokenizer_hf.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/log.h"
#include "data/file_io.h"
#include "data/unicode_text.h"

namespace moekit::data {

namespace {

using json = nlohmann::ordered_json;

std::string quoted(const std::string& s) { return json(s).dump(); }

json byte_level() {
  return json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
}

std::string vocab_object(const BpeModel& bpe) {
  std::string out = "{";
  bool first = true;
  for (int32_t id = 0; id < bpe.num_ids(); ++id) {
    if (!bpe.has_token(id)) continue;
    if (!first) out += ",";
    first = false;
    out += quoted(bytes_to_unicode(bpe.token_bytes(id)));
    out += ":";
    out += std::to_string(id);
  }
  return out + "}";
}

}  // namespace

HfTokenizerFiles hf_tokenizer_files(const Tokenizer& t, int64_t model_max_length) {
  HfTokenizerFiles f;
  const BpeModel& bpe = t.bpe();
  const auto merges = bpe.merge_list(&f.unreachable);
  f.merges = static_cast<int64_t>(merges.size());
  if (f.unreachable > 0)
    log_warn("tokenizer ", t.path(), ": ", f.unreachable,
             " tokens are built by no merge of lower-ranked tokens; the HF files leave them to whole-piece matches");

  const std::string vocab = vocab_object(bpe);
  f.vocab_json = vocab + "\n";
  // "a b" per merge: byte-level tokens never contain a space.
  f.merges_txt = "#version: 0.2\n";
  std::string merge_array = "[";
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string line =
        bytes_to_unicode(bpe.token_bytes(merges[i].first)) + " " + bytes_to_unicode(bpe.token_bytes(merges[i].second));
    f.merges_txt += line + "\n";
    if (i > 0) merge_array += ",";
    merge_array += quoted(line);
  }
  merge_array += "]";

  json added = json::array();
  json decoder_map = json::object();
  json additional = json::array();
  const int32_t eos = t.eos_id();
  for (const auto& s : t.specials()) {
    added.push_back({{"id", s.id}, {"content", s.content}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", s.special}});
    decoder_map[std::to_string(s.id)] = {{"content", s.content}, {"lstrip", false}, {"normalized", false},
                                         {"rstrip", false}, {"single_word", false}, {"special", s.special}};
    if (s.special && s.id != eos) additional.push_back(s.content);
  }
  // Everything but model.vocab and model.merges, in tokenizers' key order; the two big lists are
  // spliced in as text.
  json model = {{"type", "BPE"},          {"dropout", nullptr},           {"unk_token", nullptr},
                {"continuing_subword_prefix", ""}, {"end_of_word_suffix", ""}, {"fuse_unk", false},
                {"byte_fallback", false}, {"vocab", "@VOCAB@"},          {"merges", "@MERGES@"}};
  json split = {{"type", "Split"}, {"pattern", {{"Regex", t.pattern().source()}}}, {"behavior", "Isolated"},
                {"invert", false}};
  json tj = {{"version", "1.0"},
             {"truncation", nullptr},
             {"padding", nullptr},
             {"added_tokens", added},
             {"normalizer", t.nfc() ? json{{"type", "NFC"}} : json(nullptr)},
             {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", json::array({split, byte_level()})}}},
             {"post_processor", byte_level()},
             {"decoder", byte_level()},
             {"model", model}};
  std::string text = tj.dump(2);
  const size_t v = text.find("\"@VOCAB@\"");
  text.replace(v, 9, vocab);
  const size_t m = text.find("\"@MERGES@\"");
  text.replace(m, 10, merge_array);
  f.tokenizer_json = text + "\n";

  const std::string eos_name = eos >= 0 ? std::string(t.id_bytes(eos)) : std::string();
  json cfg = {{"add_prefix_space", false},
              {"added_tokens_decoder", decoder_map},
              {"additional_special_tokens", additional},
              {"bos_token", nullptr},
              {"clean_up_tokenization_spaces", false},
              {"eos_token", eos >= 0 ? json(eos_name) : json(nullptr)},
              {"errors", "replace"},
              {"model_max_length", model_max_length},
              {"pad_token", eos >= 0 ? json(eos_name) : json(nullptr)},
              {"split_special_tokens", false},
              {"tokenizer_class", "Qwen2Tokenizer"},
              {"unk_token", nullptr}};
  f.tokenizer_config_json = cfg.dump(2) + "\n";
  return f;
}

void write_hf_tokenizer_files(const HfTokenizerFiles& files, const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::filesystem::path d(dir);
  write_file_atomic((d / "tokenizer.json").string(), files.tokenizer_json);
  write_file_atomic((d / "vocab.json").string(), files.vocab_json);
  write_file_atomic((d / "merges.txt").string(), files.merges_txt);
  write_file_atomic((d / "tokenizer_config.json").string(), files.tokenizer_config_json);
}

}  // namespace moekit::data
