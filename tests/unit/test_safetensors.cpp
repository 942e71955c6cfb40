// Tests of checkpoint/safetensors: round trips, the reference byte vectors, one crafted file per
// validation rule of the reference reader, sharded save/load with index validation, and the
// atomicity of the writer.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "core/check.h"

namespace moekit::checkpoint {
namespace {

namespace fs = std::filesystem;

class SafetensorsFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("moekit_st_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  static void spit(const std::string& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  static std::string le64(uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
    return s;
  }
  // A file with the given header text and `data_bytes` zero bytes of data.
  std::string craft(const std::string& header, size_t data_bytes,
                    const std::string& name = "crafted.safetensors") {
    std::string p = path(name);
    spit(p, le64(header.size()) + header + std::string(data_bytes, '\0'));
    return p;
  }
  // open() must throw moekit::Error whose message names the file and contains `word`.
  static void expect_open_error(const std::string& p, const std::string& word) {
    try {
      SafetensorsFile::open(p);
      FAIL() << "open(" << p << ") succeeded; expected an error containing '" << word << "'";
    } catch (const moekit::Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(fs::path(p).filename().string()), std::string::npos) << msg;
      EXPECT_NE(msg.find(word), std::string::npos) << "missing '" << word << "' in: " << msg;
    }
  }
  template <typename F>
  static std::string error_of(F&& f) {
    try {
      f();
    } catch (const moekit::Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no moekit::Error thrown";
    return "";
  }
  bool only_files(const std::vector<std::string>& names) const {
    std::vector<std::string> got;
    for (const auto& e : fs::directory_iterator(dir_)) got.push_back(e.path().filename().string());
    std::sort(got.begin(), got.end());
    std::vector<std::string> want = names;
    std::sort(want.begin(), want.end());
    return got == want;
  }

  fs::path dir_;
};

using SafetensorsRoundTrip = SafetensorsFixture;
using SafetensorsVectors = SafetensorsFixture;
using SafetensorsValidation = SafetensorsFixture;
using SafetensorsWrite = SafetensorsFixture;

const std::string kF32x2 = R"("dtype":"F32","shape":[2])";  // 8 bytes

// ---- round trips --------------------------------------------------------------------------

TEST_F(SafetensorsRoundTrip, AllDtypesScalarAndEmpty) {
  std::vector<float> a = {1.f, -2.5f, 3.f, 0.f, 1e-3f, 7.f};
  std::vector<uint16_t> b = {0x3F80, 0xC000, 0x4040, 0x0000};  // bf16 1, -2, 3, 0
  std::vector<uint16_t> h = {0x3C00, 0xB800, 0x4500};          // f16 1, -0.5, 5
  std::vector<int32_t> i32 = {1, -2, 2147483647, -2147483647 - 1};
  std::vector<int64_t> i64 = {1, -1, 1ll << 40};
  float scalar = 3.5f;
  std::vector<TensorRef> ts = {
      {"a", DType::kF32, {2, 3}, a.data()},   {"b", DType::kBF16, {4}, b.data()},
      {"h", DType::kF16, {3}, h.data()},      {"i", DType::kI32, {2, 2}, i32.data()},
      {"l", DType::kI64, {3}, i64.data()},    {"s", DType::kF32, {}, &scalar},
      {"z", DType::kF32, {0, 4}, nullptr},
  };
  const std::string p = path("rt.safetensors");
  write_safetensors(p, ts);
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(f.data_start() % 8, 0u);
  ASSERT_EQ(f.tensors().size(), ts.size());
  uint64_t off = 0;
  for (size_t k = 0; k < ts.size(); ++k) {  // data laid out in the order given
    const TensorInfo& in = f.tensors()[k];
    EXPECT_EQ(in.name, ts[k].name);
    EXPECT_EQ(in.dtype, ts[k].dtype);
    EXPECT_EQ(in.dtype_name, dtype_name(ts[k].dtype));
    EXPECT_EQ(in.shape, ts[k].shape);
    EXPECT_EQ(in.begin, off);
    EXPECT_EQ(in.nbytes(), ts[k].nbytes());
    off = in.end;
    HostTensor t = f.read(in.name);
    EXPECT_EQ(t.dtype, ts[k].dtype);
    EXPECT_EQ(t.shape, ts[k].shape);
    ASSERT_EQ(t.nbytes(), ts[k].nbytes());
    if (t.nbytes()) {
      EXPECT_EQ(std::memcmp(t.storage.data(), ts[k].data, t.nbytes()), 0) << in.name;
    }
  }
  EXPECT_EQ(f.read_f32("a", {2, 3}), a);
  EXPECT_EQ(f.read_f32("b"), (std::vector<float>{1.f, -2.f, 3.f, 0.f}));
  EXPECT_EQ(f.read_f32("h", {3}), (std::vector<float>{1.f, -0.5f, 5.f}));
  EXPECT_EQ(f.read_f32("s"), std::vector<float>{3.5f});
  EXPECT_EQ(f.read("s").numel(), 1);
  EXPECT_TRUE(f.read_f32("z", {0, 4}).empty());
  EXPECT_EQ(f.find("nope"), nullptr);
}

TEST_F(SafetensorsRoundTrip, ReadErrorsNameFileTensorAndShapes) {
  std::vector<float> a(6, 1.f);
  std::vector<int32_t> i(2, 0);
  const std::string p = path("errs.safetensors");
  write_safetensors(p, {{"w", DType::kF32, {2, 3}, a.data()}, {"i", DType::kI32, {2}, i.data()}});
  SafetensorsFile f = SafetensorsFile::open(p);
  std::string m = error_of([&] { f.read_f32("w", {3, 2}); });
  EXPECT_NE(m.find("errs.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find("'w'"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  EXPECT_NE(m.find("[3, 2]"), std::string::npos) << m;
  m = error_of([&] { f.read_f32("i"); });
  EXPECT_NE(m.find("floating"), std::string::npos) << m;
  m = error_of([&] { f.read("missing"); });
  EXPECT_NE(m.find("'missing'"), std::string::npos) << m;
  EXPECT_NE(m.find("errs.safetensors"), std::string::npos) << m;
}

TEST_F(SafetensorsRoundTrip, OtherKnownDtypesListedButNotReadable) {
  // U8 [4] and F4 [2] (4 bits each: one byte) are valid entries moekit cannot hold as DType.
  const std::string p = craft(R"({"u":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                              R"("q":{"dtype":"F4","shape":[2],"data_offsets":[4,5]}})", 5,
                              "other.safetensors");
  SafetensorsFile f = SafetensorsFile::open(p);
  ASSERT_NE(f.find("u"), nullptr);
  EXPECT_FALSE(f.find("u")->dtype_supported());
  EXPECT_EQ(f.find("q")->dtype_name, "F4");
  std::string m = error_of([&] { f.read("u"); });
  EXPECT_NE(m.find("unsupported dtype U8 for tensor 'u'"), std::string::npos) << m;
  EXPECT_NE(m.find("other.safetensors"), std::string::npos) << m;
  m = error_of([&] { f.read_f32("q"); });
  EXPECT_NE(m.find("unsupported dtype F4"), std::string::npos) << m;
}

TEST_F(SafetensorsRoundTrip, AcceptsLeadingAndTrailingJsonWhitespace) {
  const std::string p = craft(" \n\t\r{\"w\":{" + kF32x2 + ",\"data_offsets\":[0,8]}} \n  ", 8);
  SafetensorsFile f = SafetensorsFile::open(p);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].shape, (Shape{2}));
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(SafetensorsRoundTrip, HeaderIsPaddedToEightBytes) {
  float v = 1.f;
  for (const std::string name : {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "x.y"}) {
    const std::string p = path(name + ".safetensors");
    write_safetensors(p, {{name, DType::kF32, {}, &v}});
    const std::string bytes = slurp(p);
    EXPECT_EQ(bytes[8], '{');
    EXPECT_EQ(SafetensorsFile::open(p).data_start() % 8, 0u) << name;
  }
}

// ---- reference byte vectors ---------------------------------------------------------------

TEST_F(SafetensorsVectors, AppendixA5OneF32Tensor) {
  const float w[2] = {1.f, 2.f};
  const std::string p = path("a5.safetensors");
  write_safetensors(p, {{"w", DType::kF32, {2}, w}});
  std::string expected = le64(88);
  expected += R"({"__metadata__":{"format":"pt"},)";
  expected += R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expected += "   ";
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8);
  ASSERT_EQ(expected.size(), 104u);
  EXPECT_EQ(slurp(p), expected);
  EXPECT_EQ(SafetensorsFile::open(p).read_f32("w", {2}), (std::vector<float>{1.f, 2.f}));
}

TEST_F(SafetensorsVectors, EmptyFileIsSixteenBytes) {
  const std::string p = path("empty.safetensors");
  write_safetensors(p, {}, {});
  EXPECT_EQ(slurp(p), le64(8) + "{}      ");
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
}

// ---- validation rules, in the reference reader's order ------------------------------------

TEST_F(SafetensorsValidation, HeaderTooSmall) {
  const std::string p = path("small.safetensors");
  spit(p, "\x01\x02\x03");
  expect_open_error(p, "HeaderTooSmall");
  spit(p, "");
  expect_open_error(p, "HeaderTooSmall");
}

TEST_F(SafetensorsValidation, HeaderTooLarge) {
  const std::string p = path("large.safetensors");
  spit(p, le64(kMaxSafetensorsHeader + 1) + "{}");
  expect_open_error(p, "HeaderTooLarge");
  spit(p, le64(~0ull) + "{}");  // would wrap 8 + N
  expect_open_error(p, "HeaderTooLarge");
}

TEST_F(SafetensorsValidation, InvalidHeaderLength) {
  const std::string p = path("len.safetensors");
  spit(p, le64(100) + "{}        ");
  expect_open_error(p, "InvalidHeaderLength");
}

TEST_F(SafetensorsValidation, InvalidHeaderNonUtf8) {
  expect_open_error(craft("{\"w\xff\":{}}", 0), "UTF-8");
  expect_open_error(craft("{\"\xed\xa0\x80\":1}", 0, "surrogate.safetensors"), "InvalidHeader");
}

TEST_F(SafetensorsValidation, InvalidHeaderNotJson) {
  expect_open_error(craft("{not json}", 0), "not valid JSON");
  // nlohmann stops at a NUL byte; anything after it must not be silently ignored.
  expect_open_error(craft(std::string("{}\0{\"junk\":1}", 13), 0, "nul.safetensors"),
                    "NUL byte");
  expect_open_error(craft("[]", 0, "array.safetensors"), "InvalidHeaderDeserialization");
}

TEST_F(SafetensorsValidation, InvalidHeaderWrongJsonShape) {
  const std::string bad[] = {
      R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,4]}})",           // shape not array
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})",       // 3 offsets
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})",           // 1 offset
      R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",        // negative dim
      R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})",       // float dim
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}})",       // string offset
      R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})",            // dtype not string
      R"({"w":{"shape":[1],"data_offsets":[0,4]}})",                       // dtype missing
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})",   // extra field
      R"({"w":[1,2]})",                                                    // entry not object
  };
  int k = 0;
  for (const auto& h : bad) {
    const std::string p = craft(h, 4, "shape" + std::to_string(k++) + ".safetensors");
    expect_open_error(p, "InvalidHeaderDeserialization");
    expect_open_error(p, "'w'");
  }
  // Nesting is capped before a DOM is built for it.
  expect_open_error(craft(R"({"w":{"dtype":"F32","shape":[[[[[[[[[[1]]]]]]]]]],)"
                          R"("data_offsets":[0,4]}})", 4, "deep.safetensors"),
                    "nests deeper");
}

TEST_F(SafetensorsValidation, UnknownDtype) {
  const std::string p = craft(R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", 1);
  expect_open_error(p, "unknown dtype 'Q7'");
  expect_open_error(p, "tensor 'w'");
}

TEST_F(SafetensorsValidation, FirstOffsetNotZero) {
  const std::string p = craft("{\"w\":{" + kF32x2 + ",\"data_offsets\":[8,16]}}", 16);
  expect_open_error(p, "InvalidOffset");
  expect_open_error(p, "start the data section at 0");
}

TEST_F(SafetensorsValidation, JsonAttackOverlappingOffsets) {
  // Ten tensors all claiming the same 16 bytes (reference test_json_attack).
  std::string h = "{";
  for (int i = 0; i < 10; ++i)
    h += (i ? "," : "") + std::string("\"t") + std::to_string(i) +
         R"(":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";
  h += "}";
  const std::string p = craft(h, 16);
  expect_open_error(p, "InvalidOffset");
  expect_open_error(p, "not contiguous");
}

TEST_F(SafetensorsValidation, HoleBetweenTensors) {
  const std::string p = craft("{\"a\":{" + kF32x2 + ",\"data_offsets\":[0,8]},\"b\":{" + kF32x2 +
                              ",\"data_offsets\":[16,24]}}", 24);
  expect_open_error(p, "InvalidOffset");
  expect_open_error(p, "expected begin 8");
}

TEST_F(SafetensorsValidation, EndBeforeBegin) {
  const std::string p = craft("{\"a\":{" + kF32x2 + ",\"data_offsets\":[0,8]},\"b\":{" + kF32x2 +
                              ",\"data_offsets\":[8,4]}}", 8);
  expect_open_error(p, "InvalidOffset");
  expect_open_error(p, "END < BEGIN");
}

TEST_F(SafetensorsValidation, ValidationOverflow) {
  // Element count overflows: [2, 2^64 - 2].
  expect_open_error(craft(R"({"w":{"dtype":"F32","shape":[2,18446744073709551614],)"
                          R"("data_offsets":[0,8]}})", 8, "elems.safetensors"),
                    "ValidationOverflow");
  // Element count 2^62 fits; times 32 bits does not.
  expect_open_error(craft(R"({"w":{"dtype":"F32","shape":[4611686018427387904],)"
                          R"("data_offsets":[0,8]}})", 8, "bits.safetensors"),
                    "ValidationOverflow");
  // A zero dim keeps the count at 0, but a dim past INT64_MAX cannot be a moekit Shape.
  expect_open_error(craft(R"({"w":{"dtype":"F32","shape":[0,18446744073709551615],)"
                          R"("data_offsets":[0,0]}})", 0, "dim.safetensors"),
                    "ValidationOverflow");
}

TEST_F(SafetensorsValidation, MisalignedSlice) {
  // F4 x 3 = 12 bits, not a whole number of bytes.
  const std::string p = craft(R"({"q":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", 1);
  expect_open_error(p, "MisalignedSlice");
  expect_open_error(p, "'q'");
  // F6 x 4 = 24 bits = 3 bytes is fine.
  EXPECT_NO_THROW(SafetensorsFile::open(
      craft(R"({"q":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", 3, "f6.safetensors")));
}

TEST_F(SafetensorsValidation, TensorInvalidInfo) {
  const std::string p = craft("{\"w\":{" + kF32x2 + ",\"data_offsets\":[0,12]}}", 12);
  expect_open_error(p, "TensorInvalidInfo");
  expect_open_error(p, "'w'");
}

TEST_F(SafetensorsValidation, MetadataIncompleteBufferTrailingAndTruncated) {
  const std::string h = "{\"w\":{" + kF32x2 + ",\"data_offsets\":[0,8]}}";
  EXPECT_NO_THROW(SafetensorsFile::open(craft(h, 8, "ok.safetensors")));
  const std::string trail = craft(h, 9, "trailing.safetensors");
  expect_open_error(trail, "MetadataIncompleteBuffer");
  expect_open_error(trail, "trailing bytes");
  const std::string trunc = craft(h, 6, "truncated.safetensors");
  expect_open_error(trunc, "MetadataIncompleteBuffer");
  expect_open_error(trunc, "truncated");
}

TEST_F(SafetensorsValidation, DuplicateKeys) {
  const std::string e = "{" + kF32x2 + ",\"data_offsets\":[0,8]}";
  const std::string p = craft("{\"w\":" + e + ",\"w\":" + e + "}", 8);
  expect_open_error(p, "duplicate key 'w'");
  expect_open_error(craft(R"({"__metadata__":{"a":"1","a":"2"}})", 0, "dupmeta.safetensors"),
                    "duplicate key 'a'");
  expect_open_error(craft(R"({"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                          8, "dupfield.safetensors"),
                    "duplicate key 'dtype'");
}

TEST_F(SafetensorsValidation, MetadataMustBeStringToString) {
  expect_open_error(craft(R"({"__metadata__":{"format":1}})", 0, "num.safetensors"),
                    "__metadata__ value for key 'format' must be a string");
  expect_open_error(craft(R"({"__metadata__":{"a":{"b":"c"}}})", 0, "nested.safetensors"),
                    "__metadata__");
  expect_open_error(craft(R"({"__metadata__":["pt"]})", 0, "array.safetensors"), "__metadata__");
  expect_open_error(craft(R"({"__metadata__":null})", 0, "null.safetensors"), "__metadata__");
}

TEST_F(SafetensorsValidation, ParseWithoutFileCannotReadData) {
  const std::string h = "{\"w\":{" + kF32x2 + ",\"data_offsets\":[0,8]}}";
  SafetensorsFile f = SafetensorsFile::parse("mem.safetensors", h, h.size(), 8 + h.size() + 8);
  ASSERT_NE(f.find("w"), nullptr);
  std::string m = error_of([&] { f.read("w"); });
  EXPECT_NE(m.find("mem.safetensors"), std::string::npos) << m;
  EXPECT_THROW(SafetensorsFile::parse("mem.safetensors", h, h.size(), 8 + h.size() + 7),
               moekit::Error);
}

// ---- writer -------------------------------------------------------------------------------

TEST_F(SafetensorsWrite, DuplicateNamesLeaveNoFileBehind) {
  float v[2] = {1.f, 2.f};
  const std::string p = path("dup.safetensors");
  std::string m = error_of(
      [&] { write_safetensors(p, {{"w", DType::kF32, {2}, v}, {"w", DType::kF32, {1}, v}}); });
  EXPECT_NE(m.find("duplicate tensor name 'w'"), std::string::npos) << m;
  EXPECT_NE(m.find("dup.safetensors"), std::string::npos) << m;
  EXPECT_TRUE(only_files({})) << "write left files behind";
}

TEST_F(SafetensorsWrite, RenameFailureRemovesTempFile) {
  // The target is a directory: the rename fails after the data is written and synced.
  fs::create_directories(dir_ / "target.safetensors" / "inner");
  float v = 1.f;
  EXPECT_THROW(write_safetensors(path("target.safetensors"), {{"w", DType::kF32, {}, &v}}),
               moekit::Error);
  EXPECT_TRUE(only_files({"target.safetensors"}));
  EXPECT_TRUE(fs::is_directory(dir_ / "target.safetensors"));
}

TEST_F(SafetensorsWrite, OverwriteReplacesWholeFile) {
  std::vector<float> big(100, 1.f), small = {5.f};
  const std::string p = path("m.safetensors");
  write_safetensors(p, {{"big", DType::kF32, {100}, big.data()}});
  write_safetensors(p, {{"small", DType::kF32, {1}, small.data()}});
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.find("big"), nullptr);
  EXPECT_EQ(f.read_f32("small"), small);
  EXPECT_TRUE(only_files({"m.safetensors"}));
}

TEST_F(SafetensorsWrite, RejectsBadInputs) {
  float v = 1.f;
  const std::string p = path("bad.safetensors");
  EXPECT_THROW(write_safetensors(p, {{"w", DType::kF32, {-1}, &v}}), moekit::Error);
  EXPECT_THROW(write_safetensors(p, {{"__metadata__", DType::kF32, {}, &v}}), moekit::Error);
  EXPECT_THROW(write_safetensors(p, {{"w", DType::kF32, {1ll << 62, 1ll << 62}, &v}}),
               moekit::Error);
  EXPECT_THROW(write_safetensors(p, {{"w", DType::kF32, {2}, nullptr}}), moekit::Error);
  EXPECT_THROW(write_safetensors(p, {{"w\xff", DType::kF32, {}, &v}}), moekit::Error);
  EXPECT_THROW(write_safetensors(path("no/such/dir/x.safetensors"), {}), moekit::Error);
  EXPECT_TRUE(only_files({}));
}

TEST_F(SafetensorsWrite, HeaderSizeCapOnWrite) {
  float v = 1.f;
  const std::string p = path("huge.safetensors");
  std::string m = error_of([&] {
    write_safetensors(p, {{std::string(kMaxSafetensorsHeader, 'a'), DType::kF32, {}, &v}});
  });
  EXPECT_NE(m.find("HeaderTooLarge"), std::string::npos) << m.substr(0, 200);
  EXPECT_TRUE(only_files({}));
}

TEST_F(SafetensorsWrite, NamesNeedingJsonEscapes) {
  float v[2] = {1.f, 2.f};
  const std::string name = "we\"ird\\na\u00e9me\n";
  const std::string p = path("esc.safetensors");
  write_safetensors(p, {{name, DType::kF32, {2}, v}}, {{"k\"", "v\n"}});
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.read_f32(name), (std::vector<float>{1.f, 2.f}));
  EXPECT_EQ(f.metadata().at("k\""), "v\n");
}

// ---- sharded checkpoints ------------------------------------------------------------------

class SafetensorsSharded : public SafetensorsFixture {
 protected:
  // Five F32 [4] tensors (16 bytes each) split at 40 bytes: [a b] [c d] [e].
  void write_five() {
    for (int i = 0; i < 5; ++i) data_.push_back(std::vector<float>(4, static_cast<float>(i)));
    const char* names[] = {"a", "b", "c", "d", "e"};
    std::vector<TensorRef> ts;
    for (int i = 0; i < 5; ++i) ts.push_back({names[i], DType::kF32, {4}, data_[i].data()});
    write_sharded(ckpt(), ts, 40);
  }
  std::string ckpt() const { return (dir_ / "ckpt").string(); }
  std::string in_ckpt(const std::string& n) const { return (dir_ / "ckpt" / n).string(); }
  nlohmann::json index() const {
    return nlohmann::json::parse(slurp(in_ckpt("model.safetensors.index.json")));
  }
  void set_index(const nlohmann::json& j) {
    spit(in_ckpt("model.safetensors.index.json"), j.dump());
  }
  std::vector<std::vector<float>> data_;
};

TEST_F(SafetensorsSharded, GreedySplitNamesAndIndex) {
  write_five();
  const std::string s1 = "model-00001-of-00003.safetensors";
  const std::string s2 = "model-00002-of-00003.safetensors";
  const std::string s3 = "model-00003-of-00003.safetensors";
  for (const auto& s : {s1, s2, s3}) EXPECT_TRUE(fs::exists(in_ckpt(s))) << s;
  EXPECT_FALSE(fs::exists(in_ckpt("model.safetensors")));
  nlohmann::json j = index();
  EXPECT_EQ(j["metadata"]["total_size"].get<uint64_t>(), 80u);
  EXPECT_EQ(j["weight_map"],
            (nlohmann::json{{"a", s1}, {"b", s1}, {"c", s2}, {"d", s2}, {"e", s3}}));
  EXPECT_EQ(SafetensorsFile::open(in_ckpt(s3)).metadata().at("format"), "pt");

  SafetensorsDir d = SafetensorsDir::open(ckpt());
  EXPECT_EQ(d.names(), (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  for (int i = 0; i < 5; ++i) {
    std::string n(1, static_cast<char>('a' + i));
    EXPECT_TRUE(d.has(n));
    EXPECT_EQ(d.info(n).shape, (Shape{4}));
    EXPECT_EQ(d.read_f32(n, {4}), data_[i]);
    EXPECT_EQ(d.read(n).nbytes(), 16u);
  }
  std::string m = error_of([&] { d.info("zz"); });
  EXPECT_NE(m.find("'zz'"), std::string::npos) << m;
  EXPECT_NE(m.find("ckpt"), std::string::npos) << m;
}

TEST_F(SafetensorsSharded, OversizedTensorGetsOwnShard) {
  std::vector<float> small(2, 1.f), big(16, 2.f);
  write_sharded(ckpt(),
                {{"s1", DType::kF32, {2}, small.data()},
                 {"big", DType::kF32, {16}, big.data()},
                 {"s2", DType::kF32, {2}, small.data()}},
                40);
  nlohmann::json wm = index()["weight_map"];
  EXPECT_EQ(wm["s1"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(wm["big"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(wm["s2"], "model-00003-of-00003.safetensors");
  EXPECT_EQ(SafetensorsDir::open(ckpt()).read_f32("big"), big);
}

TEST_F(SafetensorsSharded, SingleShardIsModelSafetensorsWithoutIndex) {
  write_five();  // leaves an index behind, which the single-file save must remove
  std::vector<float> v = {1.f, 2.f};
  write_sharded(ckpt(), {{"w", DType::kF32, {2}, v.data()}});
  EXPECT_TRUE(fs::exists(in_ckpt("model.safetensors")));
  EXPECT_FALSE(fs::exists(in_ckpt("model.safetensors.index.json")));
  SafetensorsDir d = SafetensorsDir::open(ckpt());
  EXPECT_EQ(d.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(d.read_f32("w"), v);
}

TEST_F(SafetensorsSharded, CreatesMissingDirectoryAndRejectsDuplicates) {
  std::vector<float> v = {1.f};
  const std::string nested = (dir_ / "x" / "y").string();
  write_sharded(nested, {{"w", DType::kF32, {1}, v.data()}});
  EXPECT_TRUE(fs::exists(dir_ / "x" / "y" / "model.safetensors"));
  EXPECT_THROW(write_sharded(ckpt(), {{"w", DType::kF32, {1}, v.data()},
                                      {"w", DType::kF32, {1}, v.data()}}, 1),
               moekit::Error);
  EXPECT_FALSE(fs::exists(ckpt()));
}

TEST_F(SafetensorsSharded, IndexPointsAtMissingShard) {
  write_five();
  fs::remove(in_ckpt("model-00002-of-00003.safetensors"));
  std::string m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("model-00002-of-00003.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find("does not exist"), std::string::npos) << m;
}

TEST_F(SafetensorsSharded, IndexListsTensorTheShardLacks) {
  write_five();
  nlohmann::json j = index();
  j["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  set_index(j);
  std::string m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("'ghost'"), std::string::npos) << m;
  EXPECT_NE(m.find("model-00001-of-00003.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find("does not contain"), std::string::npos) << m;
}

TEST_F(SafetensorsSharded, ShardHoldsExtraTensor) {
  write_five();
  nlohmann::json j = index();
  j["weight_map"].erase("d");
  set_index(j);
  std::string m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("'d'"), std::string::npos) << m;
  EXPECT_NE(m.find("model-00002-of-00003.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find("does not list"), std::string::npos) << m;
  // Mapped to the wrong shard.
  j = index();
  j["weight_map"]["d"] = "model-00001-of-00003.safetensors";
  set_index(j);
  m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("'d'"), std::string::npos) << m;
}

TEST_F(SafetensorsSharded, IndexShapeAndPathTraversal) {
  write_five();
  nlohmann::json j = index();
  j["weight_map"]["a"] = "../model-00001-of-00003.safetensors";
  set_index(j);
  std::string m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("not a plain file name"), std::string::npos) << m;
  spit(in_ckpt("model.safetensors.index.json"), R"({"metadata":{},"weight_map":[1]})");
  m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("weight_map"), std::string::npos) << m;
  EXPECT_NE(m.find("model.safetensors.index.json"), std::string::npos) << m;
  spit(in_ckpt("model.safetensors.index.json"), R"({"weight_map":{"a":"x","a":"y"}})");
  m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("duplicate key 'a'"), std::string::npos) << m;
}

TEST_F(SafetensorsSharded, FallbackToSingleSafetensorsFile) {
  std::vector<float> v = {3.f};
  fs::create_directories(ckpt());
  std::string m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("ckpt"), std::string::npos) << m;
  EXPECT_NE(m.find("no model.safetensors.index.json"), std::string::npos) << m;
  write_safetensors(in_ckpt("weights.safetensors"), {{"w", DType::kF32, {1}, v.data()}});
  EXPECT_EQ(SafetensorsDir::open(ckpt()).read_f32("w"), v);
  write_safetensors(in_ckpt("other.safetensors"), {{"u", DType::kF32, {1}, v.data()}});
  m = error_of([&] { SafetensorsDir::open(ckpt()); });
  EXPECT_NE(m.find("2 *.safetensors files"), std::string::npos) << m;
  write_safetensors(in_ckpt("model.safetensors"), {{"m", DType::kF32, {1}, v.data()}});
  EXPECT_EQ(SafetensorsDir::open(ckpt()).names(), std::vector<std::string>{"m"});
  m = error_of([&] { SafetensorsDir::open(path("absent")); });
  EXPECT_NE(m.find("absent"), std::string::npos) << m;
}

}  // namespace
}  // namespace moekit::checkpoint
