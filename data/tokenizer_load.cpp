// Readers of the tokenizer files (qwen.tiktoken, tokenizer.json, vocab.json + merges.txt,
// tokenizer_config.json). All of them are untrusted input: sizes are bounded before reading,
// every field is checked before use and every error names the file and the line or JSON key.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "data/tokenizer.h"
#include "data/unicode_text.h"

namespace moekit::data {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t kMaxVocabFileBytes = 256ull << 20;   // Qwen's tokenizer.json is 7 MB
constexpr uint64_t kMaxConfigFileBytes = 16ull << 20;
constexpr size_t kMaxTiktokenLine = 4096;
constexpr size_t kMaxTokenBytes = 1024;
constexpr int64_t kMaxIds = int64_t{1} << 24;            // 16.7M ids: far above any real vocabulary

std::string read_bounded(const std::string& path, uint64_t max_bytes) {
  std::error_code ec;
  MOEKIT_CHECK(fs::is_regular_file(path, ec), path, ": no such file (or not a regular file)");
  const uint64_t size = fs::file_size(path, ec);
  MOEKIT_CHECK(!ec, path, ": cannot stat (", ec.message(), ")");
  MOEKIT_CHECK(size <= max_bytes, path, ": ", size, " bytes is more than the ", max_bytes,
               " a tokenizer file may have");
  std::ifstream f(path, std::ios::binary);
  MOEKIT_CHECK(f.good(), path, ": cannot open for reading");
  std::string s(size, '\0');
  f.read(s.data(), static_cast<std::streamsize>(size));
  MOEKIT_CHECK(static_cast<uint64_t>(f.gcount()) == size, path, ": short read");
  return s;
}

// Through core/bounded_parse.h like every JSON moekit reads: size, depth and duplicate keys
// (a vocab.json listing a token twice) are refused, errors name the file and the key.
json parse_json(const std::string& path, uint64_t max_bytes) {
  ParseLimits limits;
  limits.max_bytes = static_cast<size_t>(max_bytes);
  limits.what = "tokenizer JSON";
  return moekit::parse_json(read_bounded(path, max_bytes), path, limits);
}

std::string show(std::string_view s) { return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace); }

// Qwen v1's special tokens, numbered from the first id after the ranks (tokenization_qwen.py).
std::vector<SpecialToken> qwen_v1_specials(int32_t first) {
  std::vector<SpecialToken> out = {{"<|endoftext|>", first, true}, {"<|im_start|>", first + 1, true},
                                   {"<|im_end|>", first + 2, true}};
  for (int i = 0; i < 205; ++i) out.push_back({"<|extra_" + std::to_string(i) + "|>", first + 3 + i, true});
  return out;
}

// ---- qwen.tiktoken -------------------------------------------------------------------------

TokenizerSpec read_tiktoken(const std::string& path) {
  const std::string text = read_bounded(path, kMaxVocabFileBytes);
  struct Entry {
    int64_t rank;
    int64_t line;
  };
  std::vector<Entry> entries;
  std::vector<std::string> bytes_of;  // in file order
  std::unordered_map<std::string, int64_t> line_of;
  std::string token;
  int64_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;  // tiktoken's loader skips empty lines
    MOEKIT_CHECK(line.size() <= kMaxTiktokenLine, path, ":", line_no, ": line of ", line.size(),
                 " bytes (a token line is base64 and a rank)");
    const size_t sp = line.find(' ');
    MOEKIT_CHECK(sp != std::string_view::npos && sp > 0 && line.find(' ', sp + 1) == std::string_view::npos &&
                     sp + 1 < line.size(),
                 path, ":", line_no, ": expected \"<base64 token> <rank>\", got ", show(line.substr(0, 80)));
    const std::string_view b64 = line.substr(0, sp), rank_text = line.substr(sp + 1);
    MOEKIT_CHECK(base64_decode(b64, &token), path, ":", line_no, ": token ", show(b64.substr(0, 80)),
                 " is not valid base64");
    MOEKIT_CHECK(!token.empty() && token.size() <= kMaxTokenBytes, path, ":", line_no, ": token of ", token.size(),
                 " bytes (1 to ", kMaxTokenBytes, " allowed)");
    int64_t rank = 0;
    for (char c : rank_text) {
      MOEKIT_CHECK(c >= '0' && c <= '9' && rank < kMaxIds, path, ":", line_no, ": rank ", show(rank_text),
                   " is not an integer in [0, ", kMaxIds, ")");
      rank = rank * 10 + (c - '0');
    }
    MOEKIT_CHECK(rank < kMaxIds, path, ":", line_no, ": rank ", rank, " is not below ", kMaxIds);
    const auto [it, fresh] = line_of.emplace(token, line_no);
    MOEKIT_CHECK(fresh, path, ":", line_no, ": token ", show(b64), " is already on line ", it->second);
    entries.push_back({rank, line_no});
    bytes_of.push_back(token);
  }
  const int64_t n = static_cast<int64_t>(entries.size());
  MOEKIT_CHECK(n > 0, path, ": no tokens (expected lines of \"<base64 token> <rank>\")");
  // Ranks must be exactly 0..n-1: the special tokens take the ids after them.
  std::vector<int64_t> by_rank(static_cast<size_t>(n), -1);
  for (int64_t i = 0; i < n; ++i) {
    const Entry& e = entries[i];
    MOEKIT_CHECK(e.rank < n, path, ":", e.line, ": rank ", e.rank, " but the file has ", n,
                 " tokens (ranks must be 0 to ", n - 1, ")");
    MOEKIT_CHECK(by_rank[e.rank] < 0, path, ":", e.line, ": rank ", e.rank, " is already on line ",
                 by_rank[e.rank] < 0 ? 0 : entries[by_rank[e.rank]].line);
    by_rank[e.rank] = i;
  }
  TokenizerSpec spec;
  spec.format = TokenizerFormat::kTiktoken;
  spec.path = path;
  spec.tokens.resize(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) spec.tokens[r] = std::move(bytes_of[by_rank[r]]);
  for (int b = 0; b < 256; ++b) {
    MOEKIT_CHECK(line_of.count(std::string(1, static_cast<char>(b))), path, ": byte ", b,
                 " has no token (a byte-level vocabulary needs all 256 single bytes)");
  }
  spec.keep_gaps = false;           // tiktoken keeps only what the pattern matches
  spec.nfc_before_specials = true;  // tokenization_qwen.py: NFC on the whole text, then encode
  spec.specials = qwen_v1_specials(static_cast<int32_t>(n));
  return spec;
}

// ---- HF files ------------------------------------------------------------------------------

// vocab (token string in the byte-level alphabet -> id) into spec.tokens; returns string -> id.
std::unordered_map<std::string, int32_t> read_vocab(const json& vocab, const std::string& where, TokenizerSpec* spec) {
  MOEKIT_CHECK(vocab.is_object() && !vocab.empty(), where, ": expected a non-empty object of token -> id");
  MOEKIT_CHECK(static_cast<int64_t>(vocab.size()) < kMaxIds, where, ": ", vocab.size(), " tokens is too many");
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(vocab.size());
  // Ids must be dense enough that the id table stays the size of the vocabulary.
  const int64_t id_limit = 2 * static_cast<int64_t>(vocab.size()) + 1024;
  std::vector<std::string> tokens;
  std::vector<uint8_t> used;
  std::string bytes;
  for (const auto& [text, v] : vocab.items()) {
    MOEKIT_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < id_limit, where, "[",
                 show(text), "]: id ", v.dump(), " is not an integer in [0, ", id_limit, ")");
    const int64_t id = v.get<int64_t>();
    uint32_t bad = 0;
    MOEKIT_CHECK(unicode_to_bytes(text, &bytes, &bad), where, "[", show(text), "]: character U+", std::hex, bad,
                 std::dec, " is outside the byte-level alphabet (not a byte-level BPE vocabulary)");
    MOEKIT_CHECK(!bytes.empty() && bytes.size() <= kMaxTokenBytes, where, "[", show(text), "]: token of ",
                 bytes.size(), " bytes");
    if (static_cast<int64_t>(tokens.size()) <= id) {
      tokens.resize(static_cast<size_t>(id) + 1);
      used.resize(static_cast<size_t>(id) + 1, 0);
    }
    MOEKIT_CHECK(!used[id], where, ": id ", id, " is used by two tokens (", show(text), " and ",
                 show(bytes_to_unicode(tokens[id])), ")");
    used[id] = 1;
    tokens[id] = bytes;
    ids.emplace(text, static_cast<int32_t>(id));
  }
  spec->tokens = std::move(tokens);
  return ids;
}

std::pair<int32_t, int32_t> merge_ids(const std::string& a, const std::string& b,
                                      const std::unordered_map<std::string, int32_t>& ids, const std::string& where) {
  const auto ia = ids.find(a), ib = ids.find(b);
  MOEKIT_CHECK(ia != ids.end(), where, ": ", show(a), " is not in the vocabulary");
  MOEKIT_CHECK(ib != ids.end(), where, ": ", show(b), " is not in the vocabulary");
  MOEKIT_CHECK(ids.count(a + b), where, ": the merged token ", show(a + b), " is not in the vocabulary");
  return {ia->second, ib->second};
}

// tokenizer_config.json beside the vocabulary: eos_token and (for vocab.json) the added tokens.
void read_tokenizer_config(const fs::path& dir, bool take_added_tokens, TokenizerSpec* spec) {
  const fs::path p = dir / "tokenizer_config.json";
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return;
  const std::string path = p.string();
  const json cfg = parse_json(path, kMaxConfigFileBytes);
  MOEKIT_CHECK(cfg.is_object(), path, ": expected a JSON object");
  if (cfg.contains("eos_token")) {
    const json& e = cfg["eos_token"];
    if (e.is_string()) spec->eos_token = e.get<std::string>();
    if (e.is_object() && e.contains("content") && e["content"].is_string()) spec->eos_token = e["content"];
  }
  if (!take_added_tokens || !cfg.contains("added_tokens_decoder")) return;
  const json& dec = cfg["added_tokens_decoder"];
  MOEKIT_CHECK(dec.is_object(), path, ": added_tokens_decoder: expected an object of id -> token");
  spec->specials.clear();
  for (const auto& [key, t] : dec.items()) {
    const std::string where = path + ": added_tokens_decoder[\"" + key + "\"]";
    char* stop = nullptr;
    const long long id = std::strtoll(key.c_str(), &stop, 10);
    MOEKIT_CHECK(!key.empty() && *stop == '\0' && id >= 0 && id < kMaxIds, where, ": the key is not a token id");
    MOEKIT_CHECK(t.is_object() && t.contains("content") && t["content"].is_string(), where,
                 ": expected an object with a string \"content\"");
    spec->specials.push_back({t["content"].get<std::string>(), static_cast<int32_t>(id), t.value("special", true)});
  }
}

void check_added_tokens(const TokenizerSpec& spec) {
  const int64_t limit = static_cast<int64_t>(spec.tokens.size()) + 65536;
  std::unordered_map<std::string, int32_t> seen;
  for (const auto& s : spec.specials) {
    MOEKIT_CHECK(!s.content.empty() && utf8_valid(s.content), spec.path, ": added token ", s.id,
                 " has empty or invalid UTF-8 content");
    MOEKIT_CHECK(s.id >= 0 && s.id < limit, spec.path, ": added token ", show(s.content), " has id ", s.id,
                 ", far past the vocabulary (", spec.tokens.size(), " tokens)");
    const auto [it, fresh] = seen.emplace(s.content, s.id);
    MOEKIT_CHECK(fresh, spec.path, ": added token ", show(s.content), " is listed twice (ids ", it->second, " and ",
                 s.id, ")");
  }
}

bool json_is_false_or_null(const json& o, const char* key) {
  return !o.contains(key) || o[key].is_null() || (o[key].is_boolean() && !o[key].get<bool>());
}

void read_normalizer(const json& n, const std::string& path, TokenizerSpec* spec) {
  if (n.is_null()) {
    spec->nfc = false;
    return;
  }
  const std::string type = n.value("type", "");
  if (type == "NFC") {
    spec->nfc = true;
    return;
  }
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array() && n["normalizers"].size() == 1) {
    read_normalizer(n["normalizers"][0], path, spec);
    return;
  }
  MOEKIT_FAIL(path, ": normalizer ", show(n.dump().substr(0, 120)),
              " is not supported (moekit reads Qwen's tokenizers: NFC or none)");
}

void read_pre_tokenizer(const json& p, const std::string& path, TokenizerSpec* spec) {
  const std::string bad = path + ": pre_tokenizer " + show(p.dump().substr(0, 200)) +
                          " is not supported (expected Qwen's: Sequence[Split(Regex, Isolated), ByteLevel])";
  MOEKIT_CHECK(p.is_object(), bad);
  const std::string type = p.value("type", "");
  MOEKIT_CHECK(type == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array() &&
                   p["pretokenizers"].size() == 2,
               bad);
  const json& split = p["pretokenizers"][0];
  const json& byte_level = p["pretokenizers"][1];
  MOEKIT_CHECK(split.is_object() && split.value("type", "") == "Split" && split.contains("pattern") &&
                   split["pattern"].is_object() && split["pattern"].contains("Regex") &&
                   split["pattern"]["Regex"].is_string() && split.value("behavior", "") == "Isolated" &&
                   json_is_false_or_null(split, "invert"),
               bad);
  MOEKIT_CHECK(byte_level.is_object() && byte_level.value("type", "") == "ByteLevel" &&
                   json_is_false_or_null(byte_level, "add_prefix_space") &&
                   json_is_false_or_null(byte_level, "use_regex"),
               bad);
  spec->pattern = split["pattern"]["Regex"].get<std::string>();
}

TokenizerSpec read_tokenizer_json(const std::string& path) {
  const json j = parse_json(path, kMaxVocabFileBytes);
  MOEKIT_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), path,
               ": expected a tokenizers JSON object with a \"model\"");
  const json& m = j["model"];
  MOEKIT_CHECK(m.value("type", "BPE") == "BPE", path, ": model.type is ", show(m.value("type", "")),
               "; moekit reads byte-level BPE tokenizers");
  MOEKIT_CHECK(json_is_false_or_null(m, "byte_fallback"), path, ": model.byte_fallback is not supported");
  MOEKIT_CHECK(!m.contains("dropout") || m["dropout"].is_null() || m["dropout"] == 0, path,
               ": model.dropout is not supported (it makes encoding random)");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    MOEKIT_CHECK(!m.contains(k) || m[k].is_null() || m[k] == "", path, ": model.", k, " is not supported");
  }
  TokenizerSpec spec;
  spec.format = TokenizerFormat::kTokenizerJson;
  spec.path = path;
  MOEKIT_CHECK(m.contains("vocab"), path, ": model.vocab is missing");
  const auto ids = read_vocab(m["vocab"], path + ": model.vocab", &spec);
  MOEKIT_CHECK(m.contains("merges") && m["merges"].is_array(), path, ": model.merges is missing or not a list");
  const json& merges = m["merges"];
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string where = path + ": model.merges[" + std::to_string(i) + "]";
    const json& e = merges[i];
    std::string a, b;
    if (e.is_string()) {  // "a b" (tokenizers < 0.20 and Qwen's files)
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      MOEKIT_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos,
                   where, ": expected \"a b\", got ", show(s));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      MOEKIT_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), where,
                   ": expected \"a b\" or [\"a\", \"b\"]");
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    }
    spec.merges.push_back(merge_ids(a, b, ids, where));
  }
  if (m.contains("ignore_merges")) {
    MOEKIT_CHECK(m["ignore_merges"].is_boolean(), path, ": model.ignore_merges is not a boolean");
    spec.ignore_merges = m["ignore_merges"].get<bool>();
  }
  if (j.contains("added_tokens")) {
    const json& added = j["added_tokens"];
    MOEKIT_CHECK(added.is_array(), path, ": added_tokens is not a list");
    for (size_t i = 0; i < added.size(); ++i) {
      const json& t = added[i];
      const std::string where = path + ": added_tokens[" + std::to_string(i) + "]";
      MOEKIT_CHECK(t.is_object() && t.contains("id") && t["id"].is_number_integer() && t.contains("content") &&
                       t["content"].is_string(),
                   where, ": expected an object with an integer \"id\" and a string \"content\"");
      for (const char* k : {"lstrip", "rstrip", "single_word"}) {
        MOEKIT_CHECK(json_is_false_or_null(t, k), where, ": ", k, " is not supported (Qwen's tokens have it false)");
      }
      const int64_t id = t["id"].get<int64_t>();
      MOEKIT_CHECK(id >= 0 && id < kMaxIds, where, ": id ", id, " out of range");
      spec.specials.push_back({t["content"].get<std::string>(), static_cast<int32_t>(id), t.value("special", true)});
    }
  }
  read_normalizer(j.contains("normalizer") ? j["normalizer"] : json(), path, &spec);
  MOEKIT_CHECK(j.contains("pre_tokenizer"), path, ": pre_tokenizer is missing");
  read_pre_tokenizer(j["pre_tokenizer"], path, &spec);
  read_tokenizer_config(fs::path(path).parent_path(), false, &spec);
  check_added_tokens(spec);
  return spec;
}

TokenizerSpec read_vocab_merges(const std::string& vocab_path, const std::string& merges_path) {
  TokenizerSpec spec;
  spec.format = TokenizerFormat::kVocabMerges;
  spec.path = vocab_path;
  const json vocab = parse_json(vocab_path, kMaxVocabFileBytes);
  const auto ids = read_vocab(vocab, vocab_path, &spec);
  const std::string text = read_bounded(merges_path, kMaxVocabFileBytes);
  int64_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    // As transformers' Qwen2Tokenizer: strip, skip a first "#version" line and empty lines,
    // split on whitespace.
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    size_t first = 0;
    while (first < line.size() && std::isspace(static_cast<unsigned char>(line[first]))) ++first;
    line.erase(0, first);
    if (line.empty() || (line_no == 1 && line.rfind("#version:", 0) == 0)) continue;
    const std::string where = merges_path + ":" + std::to_string(line_no);
    const size_t sp = line.find_first_of(" \t");
    const size_t b_at = sp == std::string::npos ? sp : line.find_first_not_of(" \t", sp);
    MOEKIT_CHECK(sp != std::string::npos && b_at != std::string::npos &&
                     line.find_first_of(" \t", b_at) == std::string::npos,
                 where, ": expected two tokens separated by a space, got ", show(line.substr(0, 80)));
    spec.merges.push_back(merge_ids(line.substr(0, sp), line.substr(b_at), ids, where));
  }
  // Special tokens: tokenizer_config.json's added_tokens_decoder, else added_tokens.json, else
  // <|endoftext|> after the vocabulary (Qwen2Tokenizer's defaults add it there).
  const fs::path dir = fs::path(vocab_path).parent_path();
  read_tokenizer_config(dir, true, &spec);
  std::error_code ec;
  if (spec.specials.empty() && fs::is_regular_file(dir / "added_tokens.json", ec)) {
    const std::string p = (dir / "added_tokens.json").string();
    const json added = parse_json(p, kMaxConfigFileBytes);
    MOEKIT_CHECK(added.is_object(), p, ": expected an object of token -> id");
    for (const auto& [content, id] : added.items()) {
      MOEKIT_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < kMaxIds, p, "[",
                   show(content), "]: id is not an integer in range");
      spec.specials.push_back({content, static_cast<int32_t>(id.get<int64_t>()), true});
    }
  }
  if (spec.specials.empty()) spec.specials.push_back({"<|endoftext|>", static_cast<int32_t>(ids.size()), true});
  check_added_tokens(spec);
  return spec;
}

// PATH (file or directory) -> the spec of the files there.
TokenizerSpec read_any(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    if (fs::is_regular_file(p / "tokenizer.json", ec)) return read_tokenizer_json((p / "tokenizer.json").string());
    if (fs::is_regular_file(p / "vocab.json", ec))
      return read_vocab_merges((p / "vocab.json").string(), (p / "merges.txt").string());
    if (fs::is_regular_file(p / "qwen.tiktoken", ec)) return read_tiktoken((p / "qwen.tiktoken").string());
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(p, ec))
      if (e.path().extension() == ".tiktoken") found.push_back(e.path().string());
    MOEKIT_CHECK(found.size() == 1, path, ": ",
                 found.empty() ? "no tokenizer files (tokenizer.json, vocab.json + merges.txt or qwen.tiktoken)"
                               : "several .tiktoken files; name one");
    return read_tiktoken(found[0]);
  }
  MOEKIT_CHECK(fs::exists(p, ec), path, ": no such file or directory");
  const std::string name = p.filename().string();
  if (p.extension() == ".tiktoken") return read_tiktoken(path);
  if (name == "vocab.json") return read_vocab_merges(path, (p.parent_path() / "merges.txt").string());
  if (name == "merges.txt") return read_vocab_merges((p.parent_path() / "vocab.json").string(), path);
  if (p.extension() == ".json") return read_tokenizer_json(path);
  MOEKIT_FAIL(path, ": not a tokenizer file moekit reads (*.tiktoken, tokenizer.json, vocab.json + merges.txt)");
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path, const TokenizerOptions& opt) {
  TokenizerSpec spec;
  try {
    spec = read_any(path);
  } catch (const json::exception& e) {  // a value of the wrong JSON type somewhere not checked above
    MOEKIT_FAIL(path, ": unexpected tokenizer file structure (", e.what(), ")");
  }
  if (opt.normalization == "nfc") {
    spec.nfc = true;
  } else if (opt.normalization == "none") {
    spec.nfc = false;
  } else {
    MOEKIT_CHECK(opt.normalization == "auto", "normalization '", opt.normalization, "' (expected auto, nfc or none)");
  }
  return std::make_unique<Tokenizer>(std::move(spec));
}

}  // namespace moekit::data
