// The one way moekit reads JSON and YAML it did not just write itself: config.json, model and
// run YAML, upcycle recipes, --set values, checkpoint meta.json and manifests, safetensors
// headers and index json, JSONL logs. Every document is bounded before it is used:
//   - size: the file's size is checked (fstat) before a byte of it is read;
//   - depth: nesting past max_depth is refused while parsing, so no deep tree is ever built
//     (nlohmann's recursive copy/dump and yaml-cpp's recursive builder would overflow the stack);
//   - duplicate keys are refused in every object / mapping (nlohmann keeps the last, yaml-cpp's
//     lookup the first: either way one of the two values is silently dropped);
//   - JSON numbers that do not fit a double (1e400) and NUL bytes are refused; YAML must be
//     UTF-8 of printable characters (the YAML spec's c-printable), without aliases (exponential
//     expansion) or a second document (yaml-cpp 0.7 returns empty documents forever after a
//     stray ",": the reader asks for two at most).
// Errors are moekit::Error naming `where` (the file, or "--set key=value") and the key path.
// JSON goes through nlohmann's SAX interface (a DOM built here with the checks above); YAML
// through yaml-cpp's event parser (checks) and then yaml-cpp's own loader (tree).
//
// Numbers are range-checked where they are used, with the helpers below or the owner's
// validate(): json_int / json_number name the file and the key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>

namespace YAML { class Node; }

namespace moekit {

struct ParseLimits {
  size_t max_bytes = size_t{16} << 20;  // configs and metadata are kilobytes
  int max_depth = 32;                   // configs nest 3-4 levels
  const char* what = "JSON";            // names the document in messages ("header", "index", ...)
  std::string tag;                      // appended to every message (e.g. a reference rule name)
};

// Whole file as text; refuses a file larger than max_bytes before reading it, and anything that
// is not a regular file. Errors name `path` and `what`.
std::string read_file_bounded(const std::string& path, size_t max_bytes, const char* what = "file");

// JSON text -> DOM under `limits`. Throws moekit::Error "<where>: <what> ... [at key 'a.b[3]']".
nlohmann::json parse_json(const std::string& text, const std::string& where, const ParseLimits& limits = {});
nlohmann::json load_json_file(const std::string& path, const ParseLimits& limits = {});
// The same, returning nullopt instead of throwing (for JSONL lines a crash may have torn).
std::optional<nlohmann::json> try_parse_json(const std::string& text, const ParseLimits& limits = {});

// YAML text -> node (exactly one document; an empty text is a null node).
YAML::Node parse_yaml(const std::string& text, const std::string& where, const ParseLimits& limits = {});
YAML::Node load_yaml_file(const std::string& path, const ParseLimits& limits = {});

// Typed, range-checked reads of a JSON value: errors name `where`, `key`, the value and the range.
// An integer stored as unsigned beyond INT64_MAX, or a float, is out of range for json_int.
int64_t json_int(const nlohmann::json& v, const std::string& where, const std::string& key, int64_t min,
                 int64_t max);
double json_number(const nlohmann::json& v, const std::string& where, const std::string& key, double min,
                   double max);

// obj[key] when obj is an object holding key with a value of T's JSON type (std::string, bool,
// double: any number, int64_t: an integer that fits), else `fallback`. nlohmann's own value()
// throws a type_error that names no file when the stored type differs (fuzz_train_checkpoint
// found one escaping from a manifest's "format": 128), which input must never cause.
template <typename T>
T json_value_or(const nlohmann::json& obj, const char* key, T fallback) {
  if (!obj.is_object()) return fallback;
  const auto it = obj.find(key);
  if (it == obj.end()) return fallback;
  if constexpr (std::is_same_v<T, std::string>) {
    return it->is_string() ? it->template get<std::string>() : fallback;
  } else if constexpr (std::is_same_v<T, bool>) {
    return it->is_boolean() ? it->template get<bool>() : fallback;
  } else if constexpr (std::is_same_v<T, double>) {
    return it->is_number() ? it->template get<double>() : fallback;
  } else {
    static_assert(std::is_same_v<T, int64_t>, "json_value_or: std::string, bool, double or int64_t");
    const bool fits = it->is_number_integer() &&
                      (!it->is_number_unsigned() || it->template get<uint64_t>() <= uint64_t{INT64_MAX});
    return fits ? it->template get<int64_t>() : fallback;
  }
}

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as Rust's from_utf8;
// on failure *bad_at is the offset of the first bad sequence.
bool valid_utf8(const std::string& s, size_t* bad_at);

// At most max_chars of s (with "..." and the full length when cut): keeps error messages that
// quote a value from the input short whatever the input holds.
std::string clip_for_message(const std::string& s, size_t max_chars = 80);

}  // namespace moekit
