// Bounded JSON and YAML parsing (see bounded_parse.h for the rules and why each exists).
#include "core/bounded_parse.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <vector>

#include "core/check.h"

namespace moekit {

namespace {

using nlohmann::json;

// One open container while parsing, for the depth count, duplicate keys and error paths.
struct Frame {
  bool is_map = false;
  std::set<std::string> keys;
  std::string key;       // the current key of a map
  bool has_key = false;  // a map: a key was read and its value not yet
  size_t index = 0;      // a sequence: elements so far
};

std::string path_of(const std::vector<Frame>& frames) {
  std::string p;
  for (const Frame& f : frames) {
    if (f.is_map) {
      if (f.has_key) p += (p.empty() ? "" : ".") + f.key;
    } else {
      p += "[" + std::to_string(f.index) + "]";
    }
  }
  return p;
}

std::string at_path(const std::vector<Frame>& frames) {
  const std::string p = path_of(frames);
  return p.empty() ? "" : " (at key '" + clip_for_message(p) + "')";
}

// nlohmann's messages start with "[json.exception.parse_error.101] "; the rest says it all.
std::string strip_nlohmann_prefix(const std::string& msg) {
  if (!msg.empty() && msg[0] == '[') {
    const size_t close = msg.find("] ");
    if (close != std::string::npos) return msg.substr(close + 2);
  }
  return msg;
}

// A DOM built from nlohmann's SAX events, refusing depth, duplicate keys and malformed input
// as they are met. Values are attached as they complete, like nlohmann's own DOM parser.
class JsonBuilder {
 public:
  JsonBuilder(const std::string& where, const ParseLimits& limits) : where_(where), limits_(limits) {}

  json take() { return std::move(root_); }

  bool null() { return put(json(nullptr)); }
  bool boolean(bool v) { return put(json(v)); }
  bool number_integer(json::number_integer_t v) { return put(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return put(json(v)); }
  bool number_float(json::number_float_t v, const std::string& text) {
    // nlohmann refuses overflow itself (error 406); kept for any other path to a non-finite value.
    if (!std::isfinite(v)) fail("number '" + clip_for_message(text) + "' is out of range");
    return put(json(v));
  }
  bool string(std::string& v) { return put(json(std::move(v))); }
  bool binary(json::binary_t& v) { return put(json(std::move(v))); }
  bool start_object(std::size_t) { return open(true); }
  bool start_array(std::size_t) { return open(false); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(std::string& k) {
    Frame& f = frames_.back();
    f.key = k;
    f.has_key = true;
    if (!f.keys.insert(k).second) fail("has duplicate key '" + clip_for_message(k) + "' (duplicate keys are not allowed)");
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) {
    fail("is not valid JSON: " + strip_nlohmann_prefix(ex.what()));
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const {
    throw Error(where_ + ": " + limits_.what + " " + msg + at_path(frames_) + limits_.tag);
  }

  // Where the next value goes: under the map's current key, or appended to the array.
  json* slot() {
    if (frames_.empty()) return &root_;
    json* parent = nodes_.back();
    if (frames_.back().is_map) return &(*parent)[frames_.back().key];
    parent->push_back(json());
    return &parent->back();
  }
  // A value finished (a scalar at once, a container at its end): the path moves on.
  void completed() {
    if (frames_.empty()) return;
    Frame& f = frames_.back();
    if (f.is_map) f.has_key = false;
    else ++f.index;
  }
  bool put(json&& v) {
    *slot() = std::move(v);
    completed();
    return true;
  }
  bool open(bool is_map) {
    if (static_cast<int>(frames_.size()) >= limits_.max_depth)
      fail("nests deeper than " + std::to_string(limits_.max_depth) + " levels");
    json* node = slot();
    *node = is_map ? json::object() : json::array();
    nodes_.push_back(node);
    frames_.emplace_back();
    frames_.back().is_map = is_map;
    return true;
  }
  bool close() {
    frames_.pop_back();
    nodes_.pop_back();
    completed();
    return true;
  }

  const std::string& where_;
  const ParseLimits& limits_;
  json root_;
  std::vector<json*> nodes_;  // the open containers, outermost first (stable: map nodes and the
                              // last element of an array only move when a sibling is added later)
  std::vector<Frame> frames_;
};

// Checks yaml-cpp's event stream: depth, duplicate keys, plain keys, no aliases.
class YamlChecker : public YAML::EventHandler {
 public:
  YamlChecker(const std::string& where, const ParseLimits& limits) : where_(where), limits_(limits) {}

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& m, YAML::anchor_t) override { scalar(m, "~"); }
  void OnAlias(const YAML::Mark& m, YAML::anchor_t) override {
    fail(m, "aliases (*name) are not supported in moekit files");
  }
  void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t, const std::string& v) override {
    scalar(m, v);
  }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    open(m, false);
  }
  void OnSequenceEnd() override { close(); }
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    open(m, true);
  }
  void OnMapEnd() override { close(); }

 private:
  [[noreturn]] void fail(const YAML::Mark& m, const std::string& msg) const {
    throw Error(where_ + ": line " + std::to_string(m.line + 1) + ", column " + std::to_string(m.column + 1) + ": " +
                msg + at_path(frames_) + limits_.tag);
  }
  bool expecting_key() const { return !frames_.empty() && frames_.back().is_map && !frames_.back().has_key; }
  // A node finished: it was the value of the enclosing map's key, or the next sequence element.
  void completed() {
    if (frames_.empty()) return;
    Frame& f = frames_.back();
    if (f.is_map) f.has_key = false;
    else ++f.index;
  }
  void scalar(const YAML::Mark& m, const std::string& v) {
    if (expecting_key()) {
      Frame& f = frames_.back();
      f.key = v;
      f.has_key = true;
      if (!f.keys.insert(v).second) fail(m, "duplicate key '" + clip_for_message(v) + "' (duplicate keys are not allowed)");
      return;
    }
    completed();
  }
  void open(const YAML::Mark& m, bool is_map) {
    if (expecting_key()) fail(m, "keys must be plain scalars, not lists or mappings");
    if (static_cast<int>(frames_.size()) >= limits_.max_depth)
      fail(m, "nests deeper than " + std::to_string(limits_.max_depth) + " levels");
    frames_.emplace_back();
    frames_.back().is_map = is_map;
  }
  void close() {
    frames_.pop_back();
    completed();
  }

  const std::string& where_;
  const ParseLimits& limits_;
  std::vector<Frame> frames_;
};

// Decodes one UTF-8 sequence at s[i] (strict, as valid_utf8); returns its length, 0 if invalid.
size_t decode_utf8(const std::string& s, size_t i, uint32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  const unsigned c = p[i];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
  } else {
    return 0;
  }
  if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return 0;
  uint32_t v = c & (0xFFu >> (len + 1));
  for (size_t k = 1; k < len; ++k) {
    if ((p[i + k] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (p[i + k] & 0x3F);
  }
  *cp = v;
  return len;
}

// The YAML spec's c-printable set: tab, line feed, carriage return, and the printable code
// points (no C0/C1 controls but NEL, no surrogates, no U+FFFE/U+FFFF).
bool yaml_printable(uint32_t c) {
  return c == 0x09 || c == 0x0A || c == 0x0D || (c >= 0x20 && c <= 0x7E) || c == 0x85 || (c >= 0xA0 && c <= 0xD7FF) ||
         (c >= 0xE000 && c <= 0xFFFD) || (c >= 0x10000 && c <= 0x10FFFF);
}

}  // namespace

bool valid_utf8(const std::string& s, size_t* bad_at) {
  uint32_t cp = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t len = decode_utf8(s, i, &cp);
    if (len == 0) {
      *bad_at = i;
      return false;
    }
    i += len;
  }
  return true;
}

std::string clip_for_message(const std::string& s, size_t max_chars) {
  if (s.size() <= max_chars) return s;
  return s.substr(0, max_chars) + "... (" + std::to_string(s.size()) + " characters)";
}

std::string read_file_bounded(const std::string& path, size_t max_bytes, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOEKIT_CHECK(fd >= 0, "cannot open ", what, " '", path, "': ", std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int stat_errno = errno;
  std::string text;
  try {
    MOEKIT_CHECK(stat_ok, path, ": cannot stat ", what, ": ", std::strerror(stat_errno));
    MOEKIT_CHECK(S_ISREG(st.st_mode), path, ": ", what, " is not a regular file");
    MOEKIT_CHECK(static_cast<uint64_t>(st.st_size) <= max_bytes, path, ": ", what, " is ", st.st_size,
                 " bytes, more than the ", max_bytes, "-byte limit for such a file");
    text.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < text.size()) {
      const ssize_t r = ::read(fd, text.data() + got, text.size() - got);
      if (r < 0 && errno == EINTR) continue;
      MOEKIT_CHECK(r >= 0, path, ": error reading ", what, ": ", std::strerror(errno));
      if (r == 0) break;  // shrank since fstat: take what is there
      got += static_cast<size_t>(r);
    }
    text.resize(got);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return text;
}

nlohmann::json parse_json(const std::string& text, const std::string& where, const ParseLimits& limits) {
  const std::string what = limits.what;
  MOEKIT_CHECK(text.size() <= limits.max_bytes, where, ": ", what, " is ", text.size(), " bytes, more than the ",
               limits.max_bytes, "-byte limit", limits.tag);
  // nlohmann's lexer may take a NUL as the end of input; bytes after one must not be ignored.
  const size_t nul = text.find('\0');
  MOEKIT_CHECK(nul == std::string::npos, where, ": ", what, " is not valid JSON: NUL byte at offset ", nul,
               limits.tag);
  JsonBuilder b(where, limits);
  json::sax_parse(text.begin(), text.end(), &b, json::input_format_t::json, /*strict=*/true);
  return b.take();
}

nlohmann::json load_json_file(const std::string& path, const ParseLimits& limits) {
  return parse_json(read_file_bounded(path, limits.max_bytes, limits.what), path, limits);
}

std::optional<nlohmann::json> try_parse_json(const std::string& text, const ParseLimits& limits) {
  try {
    return parse_json(text, "", limits);
  } catch (const Error&) {
    return std::nullopt;
  }
}

YAML::Node parse_yaml(const std::string& text, const std::string& where, const ParseLimits& limits) {
  MOEKIT_CHECK(text.size() <= limits.max_bytes, where, ": YAML text is ", text.size(), " bytes, more than the ",
               limits.max_bytes, "-byte limit", limits.tag);
  // The YAML spec's character set, checked before yaml-cpp sees the text (it decodes invalid
  // bytes its own way).
  uint32_t cp = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t len = decode_utf8(text, i, &cp);
    MOEKIT_CHECK(len > 0, where, ": not UTF-8 text (bad byte 0x", std::hex, static_cast<int>(static_cast<unsigned char>(text[i])),
                 std::dec, " at offset ", i, ")", limits.tag);
    MOEKIT_CHECK(yaml_printable(cp), where, ": character U+", std::hex, cp, std::dec, " at offset ", i,
                 " is not allowed in YAML (control characters other than tab and line breaks)", limits.tag);
    i += len;
  }
  try {
    // Pass 1: the checks, on yaml-cpp's events (no tree is built).
    std::istringstream in(text);
    YAML::Parser parser(in);
    YamlChecker checker(where, limits);
    // At most two calls: on some input ("," alone) yaml-cpp keeps returning empty documents
    // without consuming anything, so "until there are no more" would never end.
    const bool first = parser.HandleNextDocument(checker);
    MOEKIT_CHECK(!first || !parser.HandleNextDocument(checker), where,
                 ": holds more than one YAML document ('---' or stray flow punctuation); expected one", limits.tag);
    // Pass 2: the tree, of a document now known to be small, shallow and alias-free.
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    MOEKIT_FAIL(where, ": invalid YAML: ", e.what(), limits.tag);
  }
}

YAML::Node load_yaml_file(const std::string& path, const ParseLimits& limits) {
  return parse_yaml(read_file_bounded(path, limits.max_bytes, "YAML file"), path, limits);
}

int64_t json_int(const nlohmann::json& v, const std::string& where, const std::string& key, int64_t min,
                 int64_t max) {
  bool ok = v.is_number_integer();
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    x = ok ? static_cast<int64_t>(u) : 0;
  } else if (ok) {
    x = v.get<int64_t>();
  }
  MOEKIT_CHECK(v.is_number_integer(), where, ": ", key, " must be an integer, got ", clip_for_message(v.dump()));
  MOEKIT_CHECK(ok && x >= min && x <= max, where, ": ", key, " = ", clip_for_message(v.dump()),
               " is out of range [", min, ", ", max, "]");
  return x;
}

double json_number(const nlohmann::json& v, const std::string& where, const std::string& key, double min,
                   double max) {
  MOEKIT_CHECK(v.is_number(), where, ": ", key, " must be a number, got ", clip_for_message(v.dump()));
  const double x = v.get<double>();
  MOEKIT_CHECK(std::isfinite(x) && x >= min && x <= max, where, ": ", key, " = ", clip_for_message(v.dump()),
               " is out of range [", min, ", ", max, "]");
  return x;
}

}  // namespace moekit
