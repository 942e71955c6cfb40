// The tokenizer's parts against hand-derived answers and independent oracles: UTF-8 and base64
// decoding, the byte-level alphabet, Qwen's pattern through PCRE2 (pieces worked out by hand from
// the pattern, U+0085 as tiktoken and tokenizers treat it), the BPE merge loop against a
// straightforward re-implementation of tiktoken's _byte_pair_merge (both merge rules, short and
// long pieces), special tokens, NFC, HF files written and read back, and one test per bad input
// of each file reader (each error names the file and line or key). Parity with tiktoken and
// transformers on a real corpus is tests/tokenizer/ (it needs the Python reference tools).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/tokenizer_files.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "data/tokenizer_hf.h"
#include "data/unicode_text.h"
#include "test_util.h"

namespace moekit::data {
namespace {

namespace fs = std::filesystem;

std::string temp_dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/moekit_test_tokenizer_XXXXXX";
    const char* d = mkdtemp(tmpl);
    return std::string(d ? d : "/tmp");
  }();
  return dir;
}

std::string write_file(const std::string& name, const std::string& text) {
  const std::string p = temp_dir() + "/" + name;
  fs::create_directories(fs::path(p).parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
  return p;
}

// A tiktoken file: the 256 bytes in byte order, then `extra` tokens in rank order.
std::string tiktoken_text(const std::vector<std::string>& extra) {
  std::string out;
  int rank = 0;
  for (int b = 0; b < 256; ++b) out += base64_encode(std::string(1, static_cast<char>(b))) + " " + std::to_string(rank++) + "\n";
  for (const auto& t : extra) out += base64_encode(t) + " " + std::to_string(rank++) + "\n";
  return out;
}

const std::vector<std::string> kHelloTokens = {"he", "ll", "llo", "hello", " w", "or", " wor", "ld", " world"};

std::vector<std::string> pieces(const std::string& pattern, std::string_view text) {
  Pattern p(pattern, "test");
  PatternMatcher m(p);
  std::vector<std::string> out;
  m.split(text, true, [&](std::string_view s) { out.emplace_back(s); });
  return out;
}

// ---- text plumbing -------------------------------------------------------------------------

TEST(TokenizerText, Utf8ValidationFindsTheFirstBadByte) {
  EXPECT_EQ(utf8_valid_prefix("plain ascii text, longer than eight bytes"), 41u);
  EXPECT_TRUE(utf8_valid("h\xC3\xA9llo \xE4\xB8\xAD \xF0\x9F\x98\x80"));  // é, 中, 😀
  EXPECT_EQ(utf8_valid_prefix("ab\xC0\xAF"), 2u);                          // overlong '/'
  EXPECT_EQ(utf8_valid_prefix("abc\xED\xA0\x80"), 3u);                     // surrogate U+D800
  EXPECT_EQ(utf8_valid_prefix("\xF4\x90\x80\x80"), 0u);                    // above U+10FFFF
  EXPECT_EQ(utf8_valid_prefix("xyz\xE4\xB8"), 3u);                         // truncated
  EXPECT_EQ(utf8_valid_prefix("12345678\x80"), 8u);                        // stray continuation
}

TEST(TokenizerText, Base64IsStrictAndRoundTrips) {
  std::string out;
  EXPECT_TRUE(base64_decode("IQ==", &out));
  EXPECT_EQ(out, "!");
  EXPECT_TRUE(base64_decode("4rqf", &out));  // the last line of qwen.tiktoken but one
  EXPECT_EQ(out, "\xE2\xBA\x9F");
  for (const char* bad : {"", "IQ=", "I===", "IQ=A", "I Q=", "IR==", "!!!!"}) EXPECT_FALSE(base64_decode(bad, &out)) << bad;
  for (const std::string& s : std::vector<std::string>{"a", "ab", "abc", "abcd", std::string("\0\xFF", 2)}) {
    ASSERT_TRUE(base64_decode(base64_encode(s), &out));
    EXPECT_EQ(out, s);
  }
}

TEST(TokenizerText, ByteLevelAlphabetIsGpt2s) {
  EXPECT_EQ(byte_to_unicode(' '), 0x120u);  // 'Ġ'
  EXPECT_EQ(byte_to_unicode('\n'), 0x10Au);  // 'Ċ'
  EXPECT_EQ(byte_to_unicode('A'), static_cast<uint32_t>('A'));
  EXPECT_EQ(byte_to_unicode(0xAD), 0x143u);  // the last of the 68 remapped bytes
  std::string all, back;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  uint32_t bad = 0;
  ASSERT_TRUE(unicode_to_bytes(bytes_to_unicode(all), &back, &bad));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(unicode_to_bytes("\xE4\xB8\xAD", &back, &bad));  // 中 is not in the alphabet
  EXPECT_EQ(bad, 0x4E2Du);
}

TEST(TokenizerText, NfcComposesAndLeavesNormalTextAlone) {
  std::string out;
  EXPECT_FALSE(nfc_normalize("plain", &out));
  EXPECT_FALSE(nfc_normalize("\xC3\xA9", &out));  // é is NFC already
  ASSERT_TRUE(nfc_normalize("e\xCC\x81", &out));   // e + U+0301
  EXPECT_EQ(out, "\xC3\xA9");
  ASSERT_TRUE(nfc_normalize("\xE1\x84\x80\xE1\x85\xA1", &out));  // Hangul jamo -> 가
  EXPECT_EQ(out, "\xEA\xB0\x80");
  EXPECT_TRUE(nfc_boundary_before('a'));
  EXPECT_FALSE(nfc_boundary_before(0x301));
}

// ---- pre-tokenizer -------------------------------------------------------------------------

TEST(TokenizerPattern, QwenPatternPiecesWorkedOutByHand) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces(kQwenPattern, "Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces(kQwenPattern, "I'm 42!!\n\n  x"), (V{"I", "'m", " ", "4", "2", "!!\n\n", " ", " x"}));
  EXPECT_EQ(pieces(kQwenPattern, "don'T WE'LL"), (V{"don", "'T", " WE", "'LL"}));
  EXPECT_EQ(pieces(kQwenPattern, "a  \n\tb"), (V{"a", "  \n", "\tb"}));
  EXPECT_EQ(pieces(kQwenPattern, "\xE4\xB8\xAD\xE6\x96\x87\xEF\xBC\x8C" "1"),
            (V{"\xE4\xB8\xAD\xE6\x96\x87", "\xEF\xBC\x8C", "1"}));
  EXPECT_EQ(pieces(kQwenPattern, "x   "), (V{"x", "   "}));
}

TEST(TokenizerPattern, NextLineIsWhitespaceAsInTiktokenAndTokenizers) {
  using V = std::vector<std::string>;
  // U+0085 is \s for the Rust regex and Oniguruma engines (both split "!" from it); U+001C is
  // not (one piece): PCRE2 alone would give the opposite for U+0085.
  EXPECT_EQ(pieces(kQwenPattern, "!\xC2\x85"), (V{"!", "\xC2\x85"}));
  EXPECT_EQ(pieces(kQwenPattern, "!\x1C"), (V{"!\x1C"}));
  EXPECT_EQ(pcre2_pattern_for(R"(\s+(?!\S)|[^\s\p{L}])"), R"([\s\x{85}]+(?![^\s\x{85}])|[^\s\x{85}\p{L}])");
  EXPECT_EQ(pcre2_pattern_for(R"([]\s]\Q\s\E)"), R"([]\s\x{85}]\Q\s\E)");
}

TEST(TokenizerPattern, BadPatternNamesWhereItCameFrom) {
  MOEKIT_EXPECT_ERROR_HAS(Pattern("(unclosed", "my/tokenizer.json"), "my/tokenizer.json", "does not compile");
}

TEST(TokenizerSpecials, LeftmostLongest) {
  SpecialMatcher m({{"<|a|>", 10}, {"<|a|><|b|>", 11}, {"[x]", 12}});
  int32_t id = 0;
  size_t len = 0;
  EXPECT_EQ(m.find("zz<|a|><|b|>", 0, &id, &len), 2u);
  EXPECT_EQ(id, 11);
  EXPECT_EQ(len, 10u);
  EXPECT_EQ(m.find("<|a|> [x]", 1, &id, &len), 6u);
  EXPECT_EQ(id, 12);
  EXPECT_EQ(m.find("<|a", 0, &id, &len), std::string_view::npos);
}

// ---- BPE -----------------------------------------------------------------------------------

// tiktoken's _byte_pair_merge on bytes, written out plainly: parts as strings, the rank of a pair
// given by `rank` (max() when it cannot merge), lowest rank first, leftmost on ties.
std::vector<std::string> oracle_merge(const std::string& piece,
                                      const std::function<uint32_t(const std::string&, const std::string&)>& rank) {
  std::vector<std::string> parts;
  for (char c : piece) parts.emplace_back(1, c);
  for (;;) {
    uint32_t best = UINT32_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const uint32_t r = rank(parts[i], parts[i + 1]);
      if (r < best) {
        best = r;
        at = i;
      }
    }
    if (best == UINT32_MAX) return parts;
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
}

TEST(TokenizerBpe, BothRulesMatchTheOracleOnShortAndLongPieces) {
  // A vocabulary over {a, b, c} grown by concatenating random pairs of earlier tokens, and
  // random strings up to 400 bytes (the heap path starts above 64).
  const CounterRng rng(7, "bpe-oracle");
  auto pick = [&](uint64_t k, size_t n) { return static_cast<size_t>(rng.bits(k)[0] % n); };
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  std::map<std::string, uint32_t> rank_of;
  for (uint32_t r = 0; r < 256; ++r) rank_of[tokens[r]] = r;
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::map<std::pair<std::string, std::string>, uint32_t> merge_rank;
  std::vector<int32_t> pool = {'a', 'b', 'c'};
  for (uint64_t k = 0; tokens.size() < 400; ++k) {
    const int32_t x = pool[pick(k * 2, pool.size())], y = pool[pick(k * 2 + 1, pool.size())];
    const std::string t = tokens[x] + tokens[y];
    if (rank_of.count(t) || t.size() > 12) continue;
    rank_of[t] = static_cast<uint32_t>(tokens.size());
    merge_rank[{tokens[x], tokens[y]}] = static_cast<uint32_t>(merges.size());
    merges.emplace_back(x, y);
    pool.push_back(static_cast<int32_t>(tokens.size()));
    tokens.push_back(t);
  }
  const BpeModel tik = BpeModel::from_ranks(tokens);
  const BpeModel hf = BpeModel::from_merges(tokens, merges, false);
  auto tik_rank = [&](const std::string& a, const std::string& b) {
    const auto it = rank_of.find(a + b);
    return it == rank_of.end() ? UINT32_MAX : it->second;
  };
  auto hf_rank = [&](const std::string& a, const std::string& b) {
    const auto it = merge_rank.find({a, b});
    return it == merge_rank.end() ? UINT32_MAX : it->second;
  };
  BpeScratch s;
  int differ = 0;
  for (uint64_t trial = 0; trial < 300; ++trial) {
    const size_t len = 2 + pick(1000 + trial, trial % 3 == 0 ? 400 : 60);
    std::string text;
    for (size_t i = 0; i < len; ++i) text.push_back("abc"[pick(trial * 1000 + i, 3)]);
    for (const auto& [model, rank] : {std::make_pair(&tik, std::function<uint32_t(const std::string&, const std::string&)>(tik_rank)),
                                      std::make_pair(&hf, std::function<uint32_t(const std::string&, const std::string&)>(hf_rank))}) {
      std::vector<int32_t> ids;
      model->merge(text, BpeModel::kNoRank, &ids, &s);
      std::vector<std::string> got;
      for (int32_t id : ids) got.emplace_back(model->token_bytes(id));
      ASSERT_EQ(got, oracle_merge(text, rank)) << "length " << len << (model == &tik ? " tiktoken rule" : " merge rule");
    }
    std::vector<int32_t> a, b;
    tik.merge(text, BpeModel::kNoRank, &a, &s);
    hf.merge(text, BpeModel::kNoRank, &b, &s);
    differ += a != b;
  }
  // The two rules are different rules: on this vocabulary they disagree on some inputs.
  EXPECT_GT(differ, 0);
}

TEST(TokenizerBpe, RulesDifferWhereOnlyTheConcatenationIsAToken) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  tokens.insert(tokens.end(), {"bc", "ab", "abc"});  // ranks 256, 257, 258
  const BpeModel tik = BpeModel::from_ranks(tokens);
  // Merges "b c" first, then "ab c": "a bc" is not a merge, so "abc" is unreachable from [a][bc].
  const BpeModel hf = BpeModel::from_merges(tokens, {{'b', 'c'}, {'a', 'b'}, {257, 'c'}}, false);
  BpeScratch s;
  std::vector<int32_t> a, b;
  tik.merge("abc", BpeModel::kNoRank, &a, &s);
  hf.merge("abc", BpeModel::kNoRank, &b, &s);
  EXPECT_EQ(a, (std::vector<int32_t>{258}));       // tiktoken: [a][bc] -> "abc" is a token
  EXPECT_EQ(b, (std::vector<int32_t>{'a', 256}));  // merges: stays [a][bc]
  int64_t unreachable = 0;
  EXPECT_EQ(tik.merge_list(&unreachable), (std::vector<std::pair<int32_t, int32_t>>{{'b', 'c'}, {'a', 'b'}, {'a', 256}}));
  EXPECT_EQ(unreachable, 0);
}

// ---- whole tokenizers from files -----------------------------------------------------------

TEST(TokenizerFiles, TiktokenEncodesDecodesAndNumbersQwenSpecials) {
  const auto tok = Tokenizer::load(write_file("hello.tiktoken", tiktoken_text(kHelloTokens)));
  EXPECT_EQ(tok->format(), TokenizerFormat::kTiktoken);
  EXPECT_EQ(tok->num_ids(), 256 + 9 + 208);
  EXPECT_EQ(tok->special_id("<|endoftext|>"), 265);
  EXPECT_EQ(tok->special_id("<|im_end|>"), 267);
  EXPECT_EQ(tok->special_id("<|extra_204|>"), 472);
  EXPECT_EQ(tok->eos_id(), 265);
  TokenEncoder enc(*tok);
  EXPECT_EQ(enc.encode("hello world"), (std::vector<int32_t>{259, 264}));
  EXPECT_EQ(enc.encode("hellohello<|endoftext|>"), (std::vector<int32_t>{259, 259, 265}));
  EXPECT_EQ(enc.encode("<|im_end|>", false).size(), 10u);  // ordinary text: ten bytes, no merges
  const std::string text = "h\xC3\xA9llo, w\xC3\xB6rld! \xF0\x9F\x98\x80 <|im_start|>x";
  EXPECT_EQ(tok->decode(enc.encode(text)), text);
  // NFC: a decomposed é encodes like the composed one, unless normalization is off.
  EXPECT_EQ(enc.encode("he\xCC\x81"), enc.encode("h\xC3\xA9"));
  TokenizerOptions raw;
  raw.normalization = "none";
  const auto tok_raw = Tokenizer::load(temp_dir() + "/hello.tiktoken", raw);
  TokenEncoder enc_raw(*tok_raw);
  EXPECT_NE(enc_raw.encode("he\xCC\x81"), enc_raw.encode("h\xC3\xA9"));
  EXPECT_EQ(tok_raw->decode(enc_raw.encode("he\xCC\x81")), "he\xCC\x81");
  MOEKIT_EXPECT_ERROR_HAS(enc.encode("bad \xFF"), "invalid UTF-8 at byte 4");
  MOEKIT_EXPECT_ERROR_HAS(tok->id_bytes(473), "token id 473", "hello.tiktoken");
}

TEST(TokenizerFiles, HfFilesWrittenFromTiktokenEncodeTheSame) {
  const auto tok = Tokenizer::load(write_file("hf_src/qwen.tiktoken", tiktoken_text(kHelloTokens)));
  const HfTokenizerFiles f = hf_tokenizer_files(*tok);
  EXPECT_EQ(f.merges, 9);
  EXPECT_EQ(f.unreachable, 0);
  EXPECT_NE(f.merges_txt.find("#version: 0.2\nh e\nl l\nll o\nhe llo\n\xC4\xA0 w\n"), std::string::npos) << f.merges_txt;
  EXPECT_NE(f.tokenizer_config_json.find("\"tokenizer_class\": \"Qwen2Tokenizer\""), std::string::npos);
  write_hf_tokenizer_files(f, temp_dir() + "/hf_out");
  const auto from_json = Tokenizer::load(temp_dir() + "/hf_out");
  const auto from_vocab = Tokenizer::load(temp_dir() + "/hf_out/vocab.json");
  EXPECT_EQ(from_json->format(), TokenizerFormat::kTokenizerJson);
  EXPECT_EQ(from_vocab->format(), TokenizerFormat::kVocabMerges);
  EXPECT_EQ(from_json->num_ids(), tok->num_ids());
  EXPECT_EQ(from_vocab->special_id("<|extra_3|>"), tok->special_id("<|extra_3|>"));
  TokenEncoder a(*tok), b(*from_json), c(*from_vocab);
  for (const std::string text : std::vector<std::string>{"hello world", "hellohellohello  worldly\n\nhe'll", "<|im_start|>hello<|im_end|>",
                                 "say \xE4\xB8\xAD hello 123"}) {
    EXPECT_EQ(a.encode(text), b.encode(text)) << text;
    EXPECT_EQ(a.encode(text), c.encode(text)) << text;
  }
}

TEST(TokenizerFiles, DirectoryPrefersTokenizerJson) {
  write_file("both/qwen.tiktoken", tiktoken_text(kHelloTokens));
  EXPECT_EQ(Tokenizer::load(temp_dir() + "/both")->format(), TokenizerFormat::kTiktoken);
  const auto tok = Tokenizer::load(temp_dir() + "/both/qwen.tiktoken");
  write_file("both/tokenizer.json", hf_tokenizer_files(*tok).tokenizer_json);
  EXPECT_EQ(Tokenizer::load(temp_dir() + "/both")->format(), TokenizerFormat::kTokenizerJson);
  fs::create_directories(temp_dir() + "/empty_dir");
  MOEKIT_EXPECT_ERROR_HAS(Tokenizer::load(temp_dir() + "/empty_dir"), "empty_dir", "no tokenizer files");
  MOEKIT_EXPECT_ERROR_HAS(Tokenizer::load(temp_dir() + "/nothing_here"), "nothing_here", "no such file");
}

// ---- bad files: each names the file and the line or key ------------------------------------

TEST(TokenizerBadFiles, Tiktoken) {
  const std::string good = tiktoken_text(kHelloTokens);
  auto with_line = [&](const std::string& line) { return good + line + "\n"; };
  struct Case {
    std::string name, text;
    std::vector<const char*> parts;
  };
  const std::vector<Case> cases = {
      {"b64.tiktoken", with_line("@@@@ 265"), {"b64.tiktoken:266:", "not valid base64"}},
      {"fields.tiktoken", with_line("YWJj"), {"fields.tiktoken:266:", "expected \"<base64 token> <rank>\""}},
      {"rank.tiktoken", with_line("YWJj 26x"), {"rank.tiktoken:266:", "is not an integer"}},
      {"duprank.tiktoken", with_line("YWJj 3"), {"duprank.tiktoken:266:", "rank 3 is already on line 4"}},
      {"gap.tiktoken", with_line("YWJj 900"), {"gap.tiktoken:266:", "rank 900", "ranks must be 0 to 265"}},
      {"duptok.tiktoken", with_line("aGU= 265"), {"duptok.tiktoken:266:", "is already on line 257"}},
      {"long.tiktoken", with_line(std::string(5000, 'A') + " 265"), {"long.tiktoken:266:", "line of 5004 bytes"}},
      {"nobyte.tiktoken", good.substr(good.find('\n') + 1) + "AA== 265\n", {"nobyte.tiktoken:", "rank 265"}},
      {"empty.tiktoken", "\n\n", {"empty.tiktoken", "no tokens"}},
  };
  for (const auto& c : cases) {
    const std::string p = write_file(c.name, c.text);
    const std::string msg = test::error_of([&] { Tokenizer::load(p); });
    for (const char* part : c.parts) EXPECT_NE(msg.find(part), std::string::npos) << c.name << ": " << msg;
  }
  // All ranks present but byte 0 has none: named.
  std::string no_zero = good.substr(good.find('\n') + 1) + base64_encode("xyz") + " 0\n";
  MOEKIT_EXPECT_ERROR_HAS(Tokenizer::load(write_file("nozero.tiktoken", no_zero)), "nozero.tiktoken", "byte 0 has no token");
}

TEST(TokenizerBadFiles, TokenizerJson) {
  const auto tok = Tokenizer::load(write_file("base.tiktoken", tiktoken_text(kHelloTokens)));
  const std::string good = hf_tokenizer_files(*tok).tokenizer_json;
  auto variant = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  struct Case {
    std::string name, text;
    std::vector<const char*> parts;
  };
  const std::vector<Case> cases = {
      {"syntax/tokenizer.json", good.substr(0, 200), {"syntax/tokenizer.json:", "not valid JSON"}},
      {"type/tokenizer.json", variant("\"type\": \"BPE\"", "\"type\": \"Unigram\""), {"model.type is \"Unigram\""}},
      {"merge/tokenizer.json", variant("\"ll o\"", "\"ll q\""), {"model.merges[2]", "merged token \"llq\""}},
      {"mergefmt/tokenizer.json", variant("\"ll o\"", "\"llo\""), {"model.merges[2]", "expected \"a b\""}},
      {"lstrip/tokenizer.json", variant("\"lstrip\": false", "\"lstrip\": true"), {"added_tokens[0]", "lstrip"}},
      {"norm/tokenizer.json", variant("\"type\": \"NFC\"", "\"type\": \"Lowercase\""), {"normalizer", "not supported"}},
      {"vocabid/tokenizer.json", variant("\"!\":33", "\"!\":-4"), {"model.vocab[\"!\"]", "id -4"}},
      {"alpha/tokenizer.json", variant("\"!\":33", "\"\xE4\xB8\xAD\":33"), {"outside the byte-level alphabet"}},
      {"regex/tokenizer.json", variant("\"Regex\": \"", "\"Regex\": \"(("), {"regex/tokenizer.json", "does not compile"}},
  };
  for (const auto& c : cases) {
    const std::string p = write_file(c.name, c.text);
    const std::string msg = test::error_of([&] { Tokenizer::load(p); });
    EXPECT_NE(msg.find(p), std::string::npos) << c.name << ": " << msg;
    for (const char* part : c.parts) EXPECT_NE(msg.find(part), std::string::npos) << c.name << ": " << msg;
  }
}

TEST(TokenizerBadFiles, VocabAndMerges) {
  const auto tok = Tokenizer::load(write_file("vm.tiktoken", tiktoken_text(kHelloTokens)));
  const HfTokenizerFiles f = hf_tokenizer_files(*tok);
  write_file("vm/vocab.json", f.vocab_json);
  write_file("vm/merges.txt", f.merges_txt + "ll\n");
  MOEKIT_EXPECT_ERROR_HAS(Tokenizer::load(temp_dir() + "/vm/vocab.json"), "vm/merges.txt:11:", "expected two tokens");
  write_file("vm/merges.txt", f.merges_txt + "he zz\n");
  MOEKIT_EXPECT_ERROR_HAS(Tokenizer::load(temp_dir() + "/vm"), "vm/merges.txt:11:", "\"zz\" is not in the vocabulary");
  write_file("vm/merges.txt", f.merges_txt);
  write_file("vm/tokenizer_config.json", "{\"added_tokens_decoder\": {\"x1\": {\"content\": \"<s>\"}}}");
  MOEKIT_EXPECT_ERROR_HAS(Tokenizer::load(temp_dir() + "/vm"), "tokenizer_config.json: added_tokens_decoder[\"x1\"]",
                          "not a token id");
  write_file("vm/tokenizer_config.json", "{}");
  const auto plain = Tokenizer::load(temp_dir() + "/vm");  // no added tokens: <|endoftext|> after the vocabulary
  EXPECT_EQ(plain->special_id("<|endoftext|>"), 265);
  EXPECT_EQ(plain->num_ids(), 266);
}

// ---- exports carry the tokenizer (checkpoint/tokenizer_files.h) ----------------------------

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

TEST(TokenizerExport, QwenV1SourceGetsGeneratedHfFilesAndNoRemoteCode) {
  write_file("v1/qwen.tiktoken", tiktoken_text(kHelloTokens));
  write_file("v1/tokenizer_config.json", "{\"tokenizer_class\": \"QWenTokenizer\", \"auto_map\": {}}");
  write_file("v1/tokenization_qwen.py", "# remote code\n");
  const auto t = checkpoint::ExportTokenizer::from_source(temp_dir() + "/v1");
  std::vector<std::string> names = t.names();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"merges.txt", "qwen.tiktoken", "tokenizer.json", "tokenizer_config.json",
                                             "vocab.json"}));
  fs::create_directories(temp_dir() + "/v1_out");
  t.write_into(temp_dir() + "/v1_out");
  EXPECT_NE(slurp(temp_dir() + "/v1_out/tokenizer_config.json").find("Qwen2Tokenizer"), std::string::npos);
  EXPECT_EQ(slurp(temp_dir() + "/v1_out/qwen.tiktoken"), slurp(temp_dir() + "/v1/qwen.tiktoken"));
  const auto back = Tokenizer::load(temp_dir() + "/v1_out");
  EXPECT_EQ(back->format(), TokenizerFormat::kTokenizerJson);
  TokenEncoder enc(*back);
  EXPECT_EQ(enc.encode("hello world<|im_end|>"), (std::vector<int32_t>{259, 264, 267}));
  EXPECT_NE(t.describe().find("generated"), std::string::npos) << t.describe();
}

TEST(TokenizerExport, HfSourceIsCopiedVerbatim) {
  write_file("hfsrc/tokenizer.json", "{\"not parsed\": true}");
  write_file("hfsrc/special_tokens_map.json", "{}");
  write_file("hfsrc/qwen.tiktoken", "kept as it is\n");
  write_file("hfsrc/model.safetensors", "weights are not tokenizer files");
  const auto t = checkpoint::ExportTokenizer::from_source(temp_dir() + "/hfsrc/tokenizer.json");
  std::vector<std::string> names = t.names();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"qwen.tiktoken", "special_tokens_map.json", "tokenizer.json"}));
  fs::create_directories(temp_dir() + "/hfsrc_out");
  t.write_into(temp_dir() + "/hfsrc_out");
  EXPECT_EQ(slurp(temp_dir() + "/hfsrc_out/tokenizer.json"), "{\"not parsed\": true}");
}

TEST(TokenizerExport, CheckpointLooksAtInitFromThenModel) {
  write_file("ck_none/config.json", "{}");
  write_file("ck_tok/qwen.tiktoken", tiktoken_text(kHelloTokens));
  write_file("ck/config.resolved.yaml", "init_from: " + temp_dir() + "/ck_none\nmodel: " + temp_dir() + "/ck_tok\n");
  const auto t = checkpoint::ExportTokenizer::for_checkpoint(temp_dir() + "/ck", "");
  EXPECT_EQ(t.source(), temp_dir() + "/ck_tok");
  EXPECT_EQ(t.names().size(), 5u);
  fs::create_directories(temp_dir() + "/ck_bare");
  EXPECT_TRUE(checkpoint::ExportTokenizer::for_checkpoint(temp_dir() + "/ck_bare", "").empty());
  MOEKIT_EXPECT_ERROR_HAS(checkpoint::ExportTokenizer::for_checkpoint(temp_dir() + "/ck", temp_dir() + "/ck_none"),
                          "--tokenizer", "ck_none", "no tokenizer files");
}

TEST(TokenizerExport, CorruptTiktokenFailsBeforeAnythingIsWritten) {
  write_file("v1bad/qwen.tiktoken", tiktoken_text(kHelloTokens) + "@@ 265\n");
  MOEKIT_EXPECT_ERROR_HAS(checkpoint::ExportTokenizer::from_source(temp_dir() + "/v1bad"), "v1bad/qwen.tiktoken:266:",
                          "not valid base64");
}

}  // namespace
}  // namespace moekit::data
