// PCRE2 (JIT) pre-tokenizer and the special-token finder.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/pretokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace moekit::data {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

std::string pcre2_pattern_for(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size();) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (d == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else if (d == 'Q') {  // \Q...\E is literal text: copy it untouched
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == std::string::npos ? p.size() : end + 2;
        out.append(p, i, stop - i);
        i = stop;
        continue;
      } else {
        out += c;
        out += d;  // \S inside a class stays as it is: only U+0085 could differ there
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is a literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      const size_t stop = end == std::string::npos ? p.size() : end + 2;
      out.append(p, i, stop - i);
      i = stop;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

Pattern::Pattern(const std::string& pattern, const std::string& where) : source_(pattern) {
  const std::string translated = pcre2_pattern_for(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), PCRE2_UTF | PCRE2_UCP,
                        &err, &offset, nullptr);
  MOEKIT_CHECK(code_ != nullptr, where, ": the pre-tokenizer pattern does not compile (PCRE2: ", pcre2_message(err),
               " at offset ", offset, " of ", translated, ")");
  // The JIT is an optimisation: without it (a platform PCRE2 cannot JIT for) the interpreter
  // gives the same matches.
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  splits_after_newline_ = pattern == kQwenPattern;
}

Pattern::~Pattern() {
  if (code_) pcre2_code_free(code_);
}

PatternMatcher::PatternMatcher(const Pattern& p) : pattern_(p) {
  match_ = pcre2_match_data_create_from_pattern(p.code(), nullptr);
  context_ = pcre2_match_context_create(nullptr);
  MOEKIT_CHECK(match_ && context_, "PCRE2: out of memory creating match data");
  if (p.jit()) {
    // Lookahead after a long whitespace run backtracks over it; 8 MiB covers any run the
    // per-document limit allows, and an overflow is reported, never silently truncated.
    stack_ = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    MOEKIT_CHECK(stack_ != nullptr, "PCRE2: out of memory creating the JIT stack");
    pcre2_jit_stack_assign(context_, nullptr, stack_);
  }
}

PatternMatcher::~PatternMatcher() {
  if (stack_) pcre2_jit_stack_free(stack_);
  if (context_) pcre2_match_context_free(context_);
  if (match_) pcre2_match_data_free(match_);
}

bool PatternMatcher::next_match(std::string_view text, size_t from, size_t* s, size_t* e) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  // The text is valid UTF-8 (checked once per document), so PCRE2 need not check it per call.
  const int rc = pattern_.jit()
                     ? pcre2_jit_match(pattern_.code(), subject, text.size(), from, 0, match_, context_)
                     : pcre2_match(pattern_.code(), subject, text.size(), from, PCRE2_NO_UTF_CHECK, match_, context_);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  MOEKIT_CHECK(rc > 0, "pre-tokenizer: PCRE2 match failed at byte ", from, " (", pcre2_message(rc), ")");
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match_);
  *s = ov[0];
  *e = ov[1];
  return true;
}

// ---- special tokens ------------------------------------------------------------------------

SpecialMatcher::SpecialMatcher(const std::vector<std::pair<std::string, int32_t>>& tokens) {
  contents_.reserve(tokens.size());
  for (const auto& t : tokens) contents_.push_back(t.first);
  for (size_t k = 0; k < tokens.size(); ++k) {
    const std::string& c = contents_[k];
    MOEKIT_CHECK(!c.empty(), "special token ", tokens[k].second, " is empty");
    ids_[std::string_view(c)] = tokens[k].second;
    if (std::find(lengths_.begin(), lengths_.end(), c.size()) == lengths_.end()) lengths_.push_back(c.size());
    const auto f = static_cast<uint8_t>(c[0]);
    if (!first_byte_[f]) {
      first_byte_[f] = true;
      ++distinct_first_;
      only_first_ = c[0];
    }
  }
  std::sort(lengths_.rbegin(), lengths_.rend());
}

size_t SpecialMatcher::find(std::string_view text, size_t from, int32_t* id, size_t* len) const {
  if (contents_.empty()) return std::string_view::npos;
  for (size_t i = from; i < text.size(); ++i) {
    if (distinct_first_ == 1) {  // Qwen's specials all start with '<': memchr skips to them
      const void* hit = std::memchr(text.data() + i, only_first_, text.size() - i);
      if (hit == nullptr) return std::string_view::npos;
      i = static_cast<size_t>(static_cast<const char*>(hit) - text.data());
    } else if (!first_byte_[static_cast<uint8_t>(text[i])]) {
      continue;
    }
    for (size_t l : lengths_) {  // longest first
      if (l > text.size() - i) continue;
      const auto it = ids_.find(text.substr(i, l));
      if (it != ids_.end()) {
        *id = it->second;
        *len = l;
        return i;
      }
    }
  }
  return std::string_view::npos;
}

}  // namespace moekit::data
