// Token formats: Megatron .bin/.idx writer and reader byte-exact against reliability-ecosystem.md
// Appendix A.3, one crafted file per .idx validation rule, llm.c shards against Appendix A.4 and
// their header checks, and TokenDataset over several files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/indexed_dataset.h"
#include "data/llmc_shard.h"
#include "data/token_dataset.h"
#include "test_util.h"

namespace moekit::data {
namespace {

std::string temp_dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/moekit_test_data_formats_XXXXXX";
    const char* d = mkdtemp(tmpl);
    return std::string(d ? d : "/tmp");
  }();
  return dir;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> from_hex(const std::string& hex) {
  std::vector<uint8_t> out;
  std::string digits;
  for (char c : hex)
    if (c != ' ') digits += c;
  for (size_t i = 0; i + 1 < digits.size(); i += 2) out.push_back(static_cast<uint8_t>(std::stoi(digits.substr(i, 2), nullptr, 16)));
  return out;
}

// Appendix A.3: two documents of 3 and 2 int32 tokens.
const char* kA3Idx =
    "4d4d494449445800 00 0100000000000000 04 0200000000000000 0300000000000000"
    "03000000 02000000 0000000000000000 0c00000000000000"
    "0000000000000000 0100000000000000 0200000000000000";
const char* kA3Bin = "0a0000000b0000000c0000001400000015000000";

// Builds an .idx from its fields, independently of the writer, so that each test can break one.
struct IdxFields {
  std::string magic = std::string("MMIDIDX\0\0", 9);
  uint64_t version = 1;
  uint8_t code = 4;
  std::vector<int32_t> lengths{3, 2};
  std::vector<int64_t> pointers{0, 12};
  std::vector<int64_t> doc_indices{0, 1, 2};
  int64_t s_override = -1, d_override = -1;

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> b(magic.begin(), magic.end());
    auto put = [&b](const void* p, size_t n) {
      const uint8_t* c = static_cast<const uint8_t*>(p);
      b.insert(b.end(), c, c + n);
    };
    put(&version, 8);
    put(&code, 1);
    uint64_t s = s_override >= 0 ? s_override : lengths.size();
    uint64_t d = d_override >= 0 ? d_override : doc_indices.size();
    put(&s, 8);
    put(&d, 8);
    put(lengths.data(), 4 * lengths.size());
    put(pointers.data(), 8 * pointers.size());
    put(doc_indices.data(), 8 * doc_indices.size());
    return b;
  }
};

// Writes PREFIX.idx from the fields and PREFIX.bin of bin_bytes, then expects the reader to
// throw an error whose message contains every string in `want` (and the .idx path).
void expect_idx_error(const std::string& name, const IdxFields& f, size_t bin_bytes, std::vector<std::string> want) {
  const std::string prefix = temp_dir() + "/" + name;
  write_bytes(prefix + ".idx", f.bytes());
  write_bytes(prefix + ".bin", std::vector<uint8_t>(bin_bytes, 0));
  try {
    IndexedDataset ds(prefix);
    ADD_FAILURE() << name << ": expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(prefix), std::string::npos) << name << ": message does not name the file: " << msg;
    for (const auto& w : want) EXPECT_NE(msg.find(w), std::string::npos) << name << ": '" << w << "' missing in: " << msg;
  }
}

TEST(DataMegatron, WriterMatchesAppendixA3ByteForByte) {
  const std::string prefix = temp_dir() + "/a3";
  IndexedDatasetWriter w(prefix, 100000, TokenDType::kInt32);  // int32 as in the vector
  w.add_document({10, 11, 12});
  w.add_document({20, 21});
  w.finish();
  EXPECT_EQ(read_bytes(prefix + ".idx"), from_hex(kA3Idx));
  EXPECT_EQ(read_bytes(prefix + ".idx").size(), 82u);
  EXPECT_EQ(read_bytes(prefix + ".bin"), from_hex(kA3Bin));
  // No temp files left behind.
  EXPECT_NE(access((prefix + ".bin.tmp." + std::to_string(getpid())).c_str(), F_OK), 0);
}

TEST(DataMegatron, ReaderReadsAppendixA3) {
  const std::string prefix = temp_dir() + "/a3read";
  write_bytes(prefix + ".idx", from_hex(kA3Idx));
  write_bytes(prefix + ".bin", from_hex(kA3Bin));
  IndexedDataset ds(prefix);
  EXPECT_EQ(ds.dtype(), TokenDType::kInt32);
  EXPECT_EQ(ds.num_sequences(), 2);
  EXPECT_EQ(ds.num_documents(), 2);
  EXPECT_EQ(ds.num_tokens(), 5);
  EXPECT_EQ(ds.sequence_pointer(1), 12);
  EXPECT_EQ(ds.document_length(0), 3);
  EXPECT_EQ(ds.document_length(1), 2);
  int64_t out[3];
  ds.read(0, 0, 3, out);
  EXPECT_EQ(std::vector<int64_t>(out, out + 3), (std::vector<int64_t>{10, 11, 12}));
  ds.read(1, 1, 1, out);
  EXPECT_EQ(out[0], 21);
  EXPECT_THROW(ds.read(1, 1, 2, out), Error);
}

TEST(DataMegatron, WriterPicksUint16BelowVocab65500AndRoundTrips) {
  EXPECT_EQ(megatron_optimal_dtype(65499), TokenDType::kUInt16);
  EXPECT_EQ(megatron_optimal_dtype(65500), TokenDType::kInt32);
  EXPECT_EQ(megatron_optimal_dtype(151936), TokenDType::kInt32);
  for (int64_t vocab : {int64_t{65499}, int64_t{151936}}) {
    const std::string prefix = temp_dir() + "/rt" + std::to_string(vocab);
    std::vector<std::vector<int64_t>> docs{{0, vocab - 1, 5}, {}, {7}, {1, 2, 3, 4, 5, 6}};
    IndexedDatasetWriter w(prefix, vocab);
    for (const auto& d : docs) w.add_document(d);
    w.finish();
    IndexedDataset ds(prefix);
    EXPECT_EQ(ds.dtype(), vocab < 65500 ? TokenDType::kUInt16 : TokenDType::kInt32);
    EXPECT_EQ(ds.dtype_code(), vocab < 65500 ? 8 : 4);
    ASSERT_EQ(ds.num_documents(), 4);
    TokenDataset td = TokenDataset::open(prefix);
    for (int64_t d = 0; d < 4; ++d) EXPECT_EQ(td.document(d), docs[d]) << "vocab " << vocab << " doc " << d;
  }
}

// Every integer token dtype Megatron-Core defines (its DType codes 1 uint8, 2 int8, 3 int16,
// 4 int32, 5 int64, 8 uint16): files built byte by byte here, independently of the writer, read
// back; the writer produces the same bytes. (tests/e2e/data.sh checks the same against
// Megatron-Core's own IndexedDatasetBuilder and IndexedDataset when megatron-core is installed.)
TEST(DataMegatron, EveryIntegerDtypeReadsAndWritesLikeMegatron) {
  struct Case {
    uint8_t code;
    TokenDType dtype;
    int item;
    std::vector<int64_t> doc0, doc1;  // the largest id of the type among them
    int64_t vocab;
  };
  const std::vector<Case> cases = {
      {1, TokenDType::kUInt8, 1, {0, 255, 7}, {200, 1}, 256},
      {2, TokenDType::kInt8, 1, {0, 127, 7}, {100, 1}, 128},
      {3, TokenDType::kInt16, 2, {0, 32767, 7}, {30000, 1}, 32768},
      {4, TokenDType::kInt32, 4, {0, 151935, 7}, {151643, 1}, 151936},
      {5, TokenDType::kInt64, 8, {0, int64_t{1} << 40, 7}, {151643, 1}, int64_t{1} << 41},
      {8, TokenDType::kUInt16, 2, {0, 65535, 7}, {50256, 1}, 65536},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(token_dtype_name(c.dtype));
    const std::string prefix = temp_dir() + "/dtype" + std::to_string(c.code);
    IdxFields f;
    f.code = c.code;
    f.lengths = {3, 2};
    f.pointers = {0, 3 * c.item};
    std::vector<uint8_t> bin;
    for (const auto* doc : {&c.doc0, &c.doc1})
      for (int64_t t : *doc)
        for (int b = 0; b < c.item; ++b) bin.push_back(static_cast<uint8_t>(static_cast<uint64_t>(t) >> (8 * b)));
    write_bytes(prefix + ".idx", f.bytes());
    write_bytes(prefix + ".bin", bin);
    IndexedDataset ds(prefix);
    EXPECT_EQ(ds.dtype(), c.dtype);
    EXPECT_EQ(ds.dtype_code(), c.code);
    EXPECT_EQ(ds.num_tokens(), 5);
    TokenDataset td = TokenDataset::open(prefix);
    EXPECT_EQ(td.document(0), c.doc0);
    EXPECT_EQ(td.document(1), c.doc1);

    const std::string wp = temp_dir() + "/wdtype" + std::to_string(c.code);
    IndexedDatasetWriter w(wp, c.vocab, c.dtype);
    w.add_document(c.doc0);
    w.add_document(c.doc1);
    w.finish();
    EXPECT_EQ(read_bytes(wp + ".idx"), f.bytes());
    EXPECT_EQ(read_bytes(wp + ".bin"), bin);
  }
  // A vocabulary the type cannot hold is refused.
  EXPECT_THROW(IndexedDatasetWriter(temp_dir() + "/small", 257, TokenDType::kUInt8), Error);
  EXPECT_THROW(IndexedDatasetWriter(temp_dir() + "/small", 100, TokenDType::kUInt32), Error);
}

TEST(DataMegatron, NegativeIdsOfSignedDtypesAreErrorsNamingTheToken) {
  const std::string prefix = temp_dir() + "/neg16";
  IdxFields f;
  f.code = 3;  // int16
  f.pointers = {0, 6};
  write_bytes(prefix + ".idx", f.bytes());
  write_bytes(prefix + ".bin", from_hex("0100 0200 0300 0400 feff"));  // last token -2
  TokenDataset td = TokenDataset::open(prefix);
  EXPECT_EQ(td.document(1), (std::vector<int64_t>{4, -2}));
  try {
    td.check_vocab(100);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id -2"), std::string::npos) << e.what();
  }
}

TEST(DataMegatron, WriterRejectsOutOfRangeTokenAndLeavesNothing) {
  const std::string prefix = temp_dir() + "/badtok";
  {
    IndexedDatasetWriter w(prefix, 50);
    w.add_document({1, 2});
    try {
      w.add_document({3, 50});
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("document 1 offset 1"), std::string::npos) << e.what();
    }
  }  // destroyed without finish()
  EXPECT_NE(access((prefix + ".bin").c_str(), F_OK), 0);
  EXPECT_NE(access((prefix + ".idx").c_str(), F_OK), 0);
  EXPECT_NE(access((prefix + ".bin.tmp." + std::to_string(getpid())).c_str(), F_OK), 0);
}

TEST(DataMegatron, StreamedDocumentsEqualWholeOnes) {
  // append_tokens in pieces + end_document writes the same bytes as add_document.
  const std::vector<std::vector<int64_t>> docs{{4, 5, 6, 7, 8}, {}, {9}};
  const std::string whole = temp_dir() + "/whole", streamed = temp_dir() + "/streamed";
  IndexedDatasetWriter a(whole, 100), b(streamed, 100);
  for (const auto& d : docs) {
    a.add_document(d);
    const std::vector<int32_t> d32(d.begin(), d.end());
    for (size_t at = 0; at < d32.size(); at += 2) b.append_tokens(d32.data() + at, std::min<int64_t>(2, d32.size() - at));
    b.end_document();
  }
  a.finish();
  b.finish();
  EXPECT_EQ(read_bytes(whole + ".bin"), read_bytes(streamed + ".bin"));
  EXPECT_EQ(read_bytes(whole + ".idx"), read_bytes(streamed + ".idx"));
  IndexedDatasetWriter c(temp_dir() + "/open", 100);
  const int32_t t = 1;
  c.append_tokens(&t, 1);
  MOEKIT_EXPECT_ERROR_HAS(c.add_document({2}), "while document 0 is open");
  MOEKIT_EXPECT_ERROR_HAS(c.finish(), "finish while document 0 is open");
}

// ---- one test per validation rule ---------------------------------------------------------

TEST(DataMegatronValidation, Truncated) {
  IdxFields f;
  std::vector<uint8_t> b = f.bytes();
  b.resize(20);
  const std::string prefix = temp_dir() + "/trunc";
  write_bytes(prefix + ".idx", b);
  write_bytes(prefix + ".bin", std::vector<uint8_t>(20, 0));
  try {
    IndexedDataset ds(prefix);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated: 20 bytes"), std::string::npos) << e.what();
  }
}

TEST(DataMegatronValidation, BadMagic) {
  IdxFields f;
  f.magic[0] = 'X';
  expect_idx_error("magic", f, 20, {"bad magic"});
}

TEST(DataMegatronValidation, BadVersion) {
  IdxFields f;
  f.version = 2;
  expect_idx_error("version", f, 20, {"version is 2", "expected 1"});
}

TEST(DataMegatronValidation, BadDtypeCode) {
  for (uint8_t code : {0, 6, 7, 9}) {  // 6 float64, 7 float32: Megatron codes, not token types
    IdxFields f;
    f.code = code;
    expect_idx_error("dtype" + std::to_string(code), f, 20,
                     {"dtype code " + std::to_string(code), "1 = uint8", "5 = int64", "8 = uint16"});
  }
}

TEST(DataMegatronValidation, IdxSizeMismatch) {
  IdxFields f;
  f.s_override = 3;  // header says 3 sequences, arrays hold 2
  expect_idx_error("size_s", f, 20, {"does not match the header", "sequence_count (3)"});
  IdxFields g;
  g.doc_indices.push_back(2);  // one extra 8-byte entry that the header does not announce
  g.d_override = 3;
  expect_idx_error("size_d", g, 20, {"does not match the header"});
  IdxFields h;
  h.s_override = int64_t{1} << 62;  // would overflow 12*S
  expect_idx_error("size_huge", h, 20, {"need more than the file"});
}

TEST(DataMegatronValidation, NegativeLength) {
  IdxFields f;
  f.lengths = {3, -2};
  expect_idx_error("neglen", f, 20, {"sequence_lengths[1] = -2", "negative"});
}

TEST(DataMegatronValidation, NonMonotonePointers) {
  IdxFields f;
  f.lengths = {3, 2, 1};
  f.pointers = {0, 12, 4};
  f.doc_indices = {0, 1, 2, 3};
  expect_idx_error("monotone", f, 24, {"not monotone", "[1] = 12 > [2] = 4"});
}

TEST(DataMegatronValidation, InconsistentPointers) {
  IdxFields f;
  f.pointers = {0, 16};  // a gap after the first sequence
  expect_idx_error("consistent", f, 24, {"sequence_pointers[1] = 16, expected 12"});
  IdxFields g;
  g.pointers = {4, 16};  // does not start at 0
  expect_idx_error("start", g, 24, {"sequence_pointers[0] = 4, expected 0"});
}

TEST(DataMegatronValidation, BinSizeMismatch) {
  IdxFields f;
  expect_idx_error("binsize", f, 19, {".bin: size 19 bytes", "describes 20 bytes"});
  expect_idx_error("binsize2", f, 24, {".bin: size 24 bytes"});
  // int64 sequences of 2^31 - 1 tokens: the running byte count is checked against the .bin size
  // at every sequence, so it never grows past it (or overflows).
  IdxFields g;
  g.code = 5;
  g.lengths = {INT32_MAX, INT32_MAX};
  g.pointers = {0, int64_t{INT32_MAX} * 8};
  expect_idx_error("binsize_huge", g, 40, {".bin: size 40 bytes", "describes more", "sequences [0, 1) alone take"});
}

TEST(DataMegatronValidation, BadDocumentIndices) {
  IdxFields f;
  f.doc_indices = {1, 1, 2};
  expect_idx_error("doc_first", f, 20, {"document_indices[0] = 1, expected 0"});
  IdxFields g;
  g.doc_indices = {0, 2, 1};
  expect_idx_error("doc_order", g, 20, {"not non-decreasing", "[1] = 2 > [2] = 1"});
  IdxFields h;
  h.doc_indices = {0, 1};
  expect_idx_error("doc_last", h, 20, {"document_indices[1] = 1, expected sequence_count = 2"});
  IdxFields k;
  k.doc_indices = {};
  expect_idx_error("doc_empty", k, 20, {"document_count is 0"});
}

TEST(DataMegatronValidation, MissingFiles) {
  const std::string prefix = temp_dir() + "/nothing_here";
  try {
    IndexedDataset ds(prefix);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(prefix + ".idx: no such file"), std::string::npos) << e.what();
  }
  write_bytes(prefix + ".idx", IdxFields().bytes());
  try {
    IndexedDataset ds(prefix);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(prefix + ".bin: no such file"), std::string::npos) << e.what();
  }
}

TEST(DataMegatronValidation, SentenceLevelDocumentsSpanSequences) {
  // Three sequences, two documents: document 0 = sequences 0 and 1.
  IdxFields f;
  f.lengths = {2, 1, 2};
  f.pointers = {0, 8, 12};
  f.doc_indices = {0, 2, 3};
  const std::string prefix = temp_dir() + "/sentences";
  write_bytes(prefix + ".idx", f.bytes());
  write_bytes(prefix + ".bin", from_hex("01000000020000000300000004000000 05000000"));
  IndexedDataset ds(prefix);
  EXPECT_EQ(ds.num_documents(), 2);
  EXPECT_EQ(ds.document_length(0), 3);
  EXPECT_EQ(ds.document_length(1), 2);
  TokenDataset td = TokenDataset::open(prefix + ".idx");  // the .idx path works too
  EXPECT_EQ(td.document(0), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(td.document(1), (std::vector<int64_t>{4, 5}));
}

// ---- llm.c shards -------------------------------------------------------------------------

TEST(DataLlmc, WriterMatchesAppendixA4AndReadsBack) {
  const std::string path = temp_dir() + "/a4.bin";
  write_llmc_shard(path, {50256, 15496, 995}, LlmcVariant::kGpt2);
  std::vector<uint8_t> b = read_bytes(path);
  ASSERT_EQ(b.size(), 1030u);
  EXPECT_EQ(std::vector<uint8_t>(b.begin(), b.begin() + 16), from_hex("88d83401 01000000 03000000 00000000"));
  for (size_t i = 16; i < 1024; ++i) ASSERT_EQ(b[i], 0) << "header byte " << i;
  EXPECT_EQ(std::vector<uint8_t>(b.begin() + 1024, b.end()), from_hex("50c4 883c e303"));
  LlmcShard shard(path);
  EXPECT_EQ(shard.variant(), LlmcVariant::kGpt2);
  EXPECT_EQ(shard.num_tokens(), 3);
  int64_t out[3];
  shard.read(0, 3, out);
  EXPECT_EQ(std::vector<int64_t>(out, out + 3), (std::vector<int64_t>{50256, 15496, 995}));
}

TEST(DataLlmc, Uint32VariantAndDocumentSplit) {
  const std::string path = temp_dir() + "/llama.bin";
  std::vector<int64_t> toks{128000, 70000, 5, 128000, 9, 128000, 200000, 1};
  write_llmc_shard(path, toks, LlmcVariant::kLlama3);
  std::vector<uint8_t> b = read_bytes(path);
  ASSERT_EQ(b.size(), 1024u + 4 * toks.size());
  EXPECT_EQ(std::vector<uint8_t>(b.begin(), b.begin() + 12), from_hex("a1d93401 07000000 08000000"));
  TokenDataset td = TokenDataset::open(path);
  ASSERT_EQ(td.num_documents(), 3);  // a document starts at every 128000
  EXPECT_EQ(td.document(0), (std::vector<int64_t>{128000, 70000, 5}));
  EXPECT_EQ(td.document(2), (std::vector<int64_t>{128000, 200000, 1}));
  DatasetOptions whole;
  whole.llmc_delimiter = DatasetOptions::kNoSplit;
  EXPECT_EQ(TokenDataset::open(path, whole).num_documents(), 1);
  EXPECT_EQ(TokenDataset::open(path, whole).document(0), toks);
}

TEST(DataLlmc, BadHeaders) {
  auto expect_err = [](const std::string& name, std::vector<uint8_t> bytes, const std::string& want) {
    const std::string path = temp_dir() + "/" + name;
    write_bytes(path, bytes);
    try {
      LlmcShard s(path);
      ADD_FAILURE() << name;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << name << ": " << e.what();
    }
  };
  auto header = [](int32_t magic, int32_t version, int32_t count, size_t tokens_bytes) {
    std::vector<uint8_t> b(1024 + tokens_bytes, 0);
    std::memcpy(&b[0], &magic, 4);
    std::memcpy(&b[4], &version, 4);
    std::memcpy(&b[8], &count, 4);
    return b;
  };
  expect_err("short.bin", std::vector<uint8_t>(100, 0), "truncated: 100 bytes");
  expect_err("magic.bin", header(12345, 1, 0, 0), "bad magic 12345");
  expect_err("eval.bin", header(20240522, 1, 0, 0), "eval file");
  expect_err("version.bin", header(20240520, 2, 0, 0), "version 2, expected 1");
  expect_err("version7.bin", header(20240801, 1, 0, 0), "version 1, expected 7");
  expect_err("negative.bin", header(20240520, 1, -3, 0), "negative");
  expect_err("size.bin", header(20240520, 1, 3, 4), "size 1028 bytes");
  expect_err("size32.bin", header(20240801, 7, 3, 6), "needs 1036");
}

TEST(DataTokenDataset, SeveralFilesAndPositions) {
  const std::string a = temp_dir() + "/multi_a", b = temp_dir() + "/multi_b.bin";
  IndexedDatasetWriter w(a, 1000);
  w.add_document({1, 2, 3});
  w.add_document({4});
  w.finish();
  write_llmc_shard(b, {50256, 7, 8, 50256, 9}, LlmcVariant::kGpt2);
  TokenDataset td = TokenDataset::open({a, b});
  ASSERT_EQ(td.num_files(), 2);
  EXPECT_EQ(td.num_documents(), 4);
  EXPECT_EQ(td.num_tokens(), 9);
  EXPECT_EQ(td.file(1).first_document, 2);
  EXPECT_EQ(td.file(1).format, FileFormat::kLlmc);
  EXPECT_EQ(td.document(1), (std::vector<int64_t>{4}));
  EXPECT_EQ(td.document(3), (std::vector<int64_t>{50256, 9}));
  EXPECT_EQ(td.file_of(2), 1);
  EXPECT_EQ(td.position(3, 1), b + " document 1 (global 3) offset 1");
  try {
    td.check_vocab(50000);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(b + " document 0 (global 2) offset 0: token id 50256"), std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(td.check_vocab(50257));
}

TEST(DataTokenDataset, UnknownPathsAreClearErrors) {
  const std::string missing = temp_dir() + "/missing_prefix";
  try {
    TokenDataset::open(missing);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing + ": no such dataset"), std::string::npos) << e.what();
  }
  const std::string junk = temp_dir() + "/junk.bin";
  write_bytes(junk, std::vector<uint8_t>(2048, 7));
  try {
    TokenDataset::open(junk);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not an llm.c token shard"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moekit::data
