// Pre-tokenization: the split of text into pieces that BPE never merges across, by the
// tokenizer's regular expression (Qwen's, from tokenization_qwen.py and tokenizer.json) run by
// PCRE2 with its JIT compiler in UTF + UCP mode (Unicode properties for \p{L}, \p{N}, \s), and
// the split on special-token strings that comes before it.
//
// One difference between engines is bridged here: the Rust regex crate (tiktoken) and Oniguruma
// (HF tokenizers) count U+0085 (NEXT LINE) as \s (Unicode White_Space), PCRE2 does not (its \s is
// the Z categories plus \t\n\v\f\r). The pattern is rewritten so that \s and \S include and
// exclude U+0085 as the other two engines do (checked by tests on every such character).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;
struct pcre2_real_match_context_8;
struct pcre2_real_jit_stack_8;

namespace moekit::data {

// Qwen's pattern (Qwen v1 tokenization_qwen.py PAT_STR, Qwen2 tokenizer.json Split regex).
inline constexpr char kQwenPattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The pattern as PCRE2 must see it to match like the Rust and Oniguruma engines (see above).
std::string pcre2_pattern_for(const std::string& pattern);

// A compiled pattern, shared read-only by all threads; each thread matches through its own
// PatternMatcher.
class Pattern {
 public:
  // `where` names the file (and key) the pattern came from, for the error message.
  Pattern(const std::string& pattern, const std::string& where);
  ~Pattern();
  Pattern(const Pattern&) = delete;
  Pattern& operator=(const Pattern&) = delete;

  const std::string& source() const { return source_; }
  bool jit() const { return jit_; }
  // True for Qwen's pattern, which ends a piece at every "\n" followed by a non-space character
  // (no alternative continues past such a newline, none looks behind, and \s*[\r\n]+ ends a
  // whitespace run at its last newline whatever follows): text may be cut there and
  // pre-tokenized in pieces. Not every pattern: with GPT-2's (\s+(?!\S) and no \s*[\r\n]+ before
  // it) "  \nX" gives "  ", "\n", "X", but "  \n" cut off before the X is one piece.
  bool splits_after_newline() const { return splits_after_newline_; }
  pcre2_real_code_8* code() const { return code_; }

 private:
  std::string source_;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false, splits_after_newline_ = false;
};

class PatternMatcher {
 public:
  explicit PatternMatcher(const Pattern& p);
  ~PatternMatcher();
  PatternMatcher(const PatternMatcher&) = delete;
  PatternMatcher& operator=(const PatternMatcher&) = delete;

  // Calls f(piece) for every match in `text` (valid UTF-8, checked by the caller) in order, and,
  // with keep_gaps, for the text between matches too (tokenizers' Split "Isolated"; tiktoken
  // drops it). Qwen's pattern matches every character, so there are no gaps.
  template <typename F>
  void split(std::string_view text, bool keep_gaps, F&& f) {
    size_t gap = 0, pos = 0;
    size_t s, e;
    while (pos < text.size() && next_match(text, pos, &s, &e)) {
      if (e == s) {  // an empty match: step over one character (it stays in the gap)
        pos = s + 1;
        while (pos < text.size() && (static_cast<uint8_t>(text[pos]) & 0xC0) == 0x80) ++pos;
        continue;
      }
      if (keep_gaps && s > gap) f(text.substr(gap, s - gap));
      f(text.substr(s, e - s));
      gap = pos = e;
    }
    if (keep_gaps && text.size() > gap) f(text.substr(gap));
  }

 private:
  bool next_match(std::string_view text, size_t from, size_t* s, size_t* e);

  const Pattern& pattern_;
  pcre2_real_match_data_8* match_ = nullptr;
  pcre2_real_match_context_8* context_ = nullptr;
  pcre2_real_jit_stack_8* stack_ = nullptr;
};

// Finds special-token strings in text: leftmost, and the longest at that position (tokenizers'
// added-vocabulary Aho-Corasick with LeftmostLongest; tiktoken's alternation agrees whenever no
// special is a prefix of another, as for Qwen's).
class SpecialMatcher {
 public:
  SpecialMatcher() = default;
  // (content, id) pairs; contents distinct and non-empty (checked by the loader).
  explicit SpecialMatcher(const std::vector<std::pair<std::string, int32_t>>& tokens);
  // Movable (the views keep pointing into the moved vector's buffer), not copyable.
  SpecialMatcher(SpecialMatcher&&) = default;
  SpecialMatcher& operator=(SpecialMatcher&&) = default;
  SpecialMatcher(const SpecialMatcher&) = delete;
  SpecialMatcher& operator=(const SpecialMatcher&) = delete;
  bool empty() const { return contents_.empty(); }
  // The first special in text[from..); npos when none. *id and *len describe it.
  size_t find(std::string_view text, size_t from, int32_t* id, size_t* len) const;

 private:
  std::vector<std::string> contents_;
  std::unordered_map<std::string_view, int32_t> ids_;  // views into contents_
  std::vector<size_t> lengths_;                        // distinct lengths, longest first
  bool first_byte_[256] = {};
  int distinct_first_ = 0;
  char only_first_ = 0;
};

}  // namespace moekit::data
