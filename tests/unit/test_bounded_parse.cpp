// The bounded JSON / YAML parser (core/bounded_parse.h) and the checked size arithmetic
// (core/checked.h): depth, size, duplicate keys, out-of-range numbers, aliases and extra YAML
// documents are refused with the place named; well-formed documents parse to what nlohmann and
// yaml-cpp themselves produce.
#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/checked.h"
#include "core/tensor.h"
#include "test_util.h"

namespace moekit {
namespace {

std::string nested(char open, char close, int n) { return std::string(n, open) + std::string(n, close); }

TEST(BoundedJson, ParsesWhatNlohmannParses) {
  const std::string text =
      R"({"a": 1, "b": [1.5, -2, "x", null, true, {"c": {"d": []}}], "u": 18446744073709551615, "e": {}})";
  EXPECT_EQ(parse_json(text, "t.json"), nlohmann::json::parse(text));
  EXPECT_EQ(parse_json("[]", "t.json"), nlohmann::json::array());
  EXPECT_EQ(parse_json("7", "t.json"), nlohmann::json(7));
}

TEST(BoundedJson, DepthIsCappedWithoutRecursion) {
  // 100,000 levels overflowed the stack of config.json readers (nlohmann's copy and dump recurse).
  const std::string deep = "{\"x\":" + nested('[', ']', 100000) + "}";
  MOEKIT_EXPECT_ERROR_HAS(parse_json(deep, "config.json"), "config.json", "nests deeper than 32 levels", "at key 'x[0][0]");
  ParseLimits l;
  l.max_depth = 3;
  EXPECT_NO_THROW(parse_json("[[[1]]]", "t", l));
  MOEKIT_EXPECT_ERROR_HAS(parse_json("[[[[1]]]]", "t", l), "nests deeper than 3 levels");
}

TEST(BoundedJson, DuplicateKeysAreRefusedAtAnyDepth) {
  MOEKIT_EXPECT_ERROR_HAS(parse_json(R"({"a": 1, "a": 2})", "c.json"), "duplicate key 'a'");
  MOEKIT_EXPECT_ERROR_HAS(parse_json(R"({"x": {"y": [{"k": 1, "k": 1}]}})", "c.json"), "c.json: JSON has duplicate key 'k'", "at key 'x.y[0].k'");
  // The same key in sibling objects is fine.
  EXPECT_NO_THROW(parse_json(R"([{"k": 1}, {"k": 2}])", "c.json"));
}

TEST(BoundedJson, NumbersOutOfRangeNameTheKey) {
  MOEKIT_EXPECT_ERROR_HAS(parse_json(R"({"rope": {"theta": 1e400}})", "c.json"), "c.json", "1e400", "at key 'rope.theta'");
  const nlohmann::json j = parse_json(R"({"a": 18446744073709551615, "b": -5, "c": 2.5, "d": 4294967296})", "c.json");
  MOEKIT_EXPECT_ERROR_HAS(json_int(j["a"], "c.json", "a", 0, std::numeric_limits<int64_t>::max()), "c.json: a = 18446744073709551615 is out of range");
  MOEKIT_EXPECT_ERROR_HAS(json_int(j["b"], "c.json", "b", 0, 10), "b = -5 is out of range [0, 10]");
  MOEKIT_EXPECT_ERROR_HAS(json_int(j["c"], "c.json", "c", 0, 10), "c must be an integer, got 2.5");
  EXPECT_EQ(json_int(j["d"], "c.json", "d", 0, int64_t{1} << 40), int64_t{4294967296});
  MOEKIT_EXPECT_ERROR_HAS(json_number(j["d"], "c.json", "d", 0, 1e6), "d = 4294967296 is out of range");
}

TEST(BoundedJson, SizeNulAndSyntaxErrors) {
  ParseLimits l;
  l.max_bytes = 10;
  MOEKIT_EXPECT_ERROR_HAS(parse_json("[1,2,3,4,5,6]", "s.json", l), "13 bytes, more than the 10-byte limit");
  MOEKIT_EXPECT_ERROR_HAS(parse_json(std::string("{}\0{}", 5), "s.json"), "NUL byte at offset 2");
  MOEKIT_EXPECT_ERROR_HAS(parse_json(R"({"a": [1, 2,]})", "s.json"), "s.json: JSON is not valid JSON", "at key 'a[2]'");
  EXPECT_FALSE(try_parse_json("{\"a\": 1, \"a\": 2}").has_value());
  EXPECT_FALSE(try_parse_json("{\"step\": 3").has_value());  // a line torn by a crash
  EXPECT_EQ(try_parse_json("{\"step\": 3}")->at("step"), 3);
}

TEST(BoundedJson, FileSizeIsCheckedBeforeReading) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("moekit_bp_" + std::to_string(::getpid()) + ".json")).string();
  std::ofstream(path) << "[" << std::string(5000, ' ') << "]";
  EXPECT_EQ(load_json_file(path), nlohmann::json::array());
  ParseLimits l;
  l.max_bytes = 4096;
  l.what = "index";
  MOEKIT_EXPECT_ERROR_HAS(load_json_file(path, l), "index is 5002 bytes, more than the 4096-byte limit");
  MOEKIT_EXPECT_ERROR_HAS(read_file_bounded(path + ".missing", 10, "meta"), "cannot open meta");
  MOEKIT_EXPECT_ERROR_HAS(read_file_bounded(std::filesystem::temp_directory_path().string(), 10, "meta"), "not a regular file");
  std::filesystem::remove(path);
}

TEST(BoundedYaml, ParsesWhatYamlCppParses) {
  const std::string text = "a: 1\nb: [x, {c: d}]\nnested:\n  k: v\n  l: ~\n";
  const YAML::Node n = parse_yaml(text, "r.yaml");
  EXPECT_EQ(YAML::Dump(n), YAML::Dump(YAML::Load(text)));
  EXPECT_TRUE(parse_yaml("", "r.yaml").IsNull());
}

TEST(BoundedYaml, DuplicateKeysDepthAliasesAndDocuments) {
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("seed: 1\ntrain:\n  steps: 3\n  steps: 4\n", "run.yaml"), "run.yaml: line 4", "duplicate key 'steps'", "at key 'train.steps'");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("a: 1\nb: 2\na: 3\n", "run.yaml"), "duplicate key 'a'");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("x: " + nested('[', ']', 100000) + "\n", "m.yaml"), "nests deeper than 32 levels");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("a: &x [1, 2]\nb: *x\n", "m.yaml"), "aliases (*name) are not supported");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("a: 1\n---\nb: 2\n", "m.yaml"), "more than one YAML document");
  // Found by fuzz_config: yaml-cpp returns an empty document for "," again and again.
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml(",", "run.yaml"), "run.yaml", "more than one YAML document");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("a: \xff\n", "m.yaml"), "not UTF-8 text (bad byte 0xff at offset 3)");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml(std::string("a: 1\0b", 6), "m.yaml"), "U+0 at offset 4");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("a: \x1b[31m\n", "m.yaml"), "U+1b");
  EXPECT_EQ(parse_yaml("name: caf\xc3\xa9 \xe2\x82\xac\n", "m.yaml")["name"].as<std::string>(), "caf\xc3\xa9 \xe2\x82\xac");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("? [a, b]\n: 1\n", "m.yaml"), "keys must be plain scalars");
  MOEKIT_EXPECT_ERROR_HAS(parse_yaml("a: [1, 2\n", "m.yaml"), "m.yaml: invalid YAML");
  // Equal keys in sibling mappings are fine; so are anchors that are never aliased.
  EXPECT_NO_THROW(parse_yaml("- {k: 1}\n- {k: 2}\n- &a {k: 3}\n", "m.yaml"));
}

TEST(CheckedArithmetic, OverflowAndNegativeSizesAreErrors) {
  EXPECT_EQ(checked_product({1 << 20, 1 << 20, 1 << 20}, "x"), int64_t{1} << 60);
  MOEKIT_EXPECT_ERROR_HAS(checked_product({int64_t{1} << 40, int64_t{1} << 40}, "embedding"), "embedding: size 1099511627776 x 1099511627776 overflows");
  MOEKIT_EXPECT_ERROR_HAS(checked_add(std::numeric_limits<int64_t>::max(), 1, "sum"), "overflows");
  MOEKIT_EXPECT_ERROR_HAS(checked_mul(-1, 2, "rows"), "negative");
  const CheckedSize a = int64_t{1} << 31;
  EXPECT_EQ((a * a + 5).value(), (int64_t{1} << 62) + 5);
  MOEKIT_EXPECT_ERROR_HAS((void)(a * a * 4), "overflows");
  EXPECT_EQ(shape_numel({3, 4, 5}), 60);
  EXPECT_EQ(shape_numel({}), 1);
  MOEKIT_EXPECT_ERROR_HAS(shape_numel({int64_t{1} << 40, int64_t{1} << 40}), "more elements than");
  MOEKIT_EXPECT_ERROR_HAS(shape_numel({2, -3}), "negative dimension");
}

}  // namespace
}  // namespace moekit
