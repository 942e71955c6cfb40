// HDF5 training checkpoints: bit-exact round trips, the commit protocol (latest, keep-K,
// replacement, stale .tmp), row pieces written by two ranks, and every way a checkpoint on
// disk can be damaged (flipped data byte, missing meta, truncated file, wrong dtype), each of
// which must give an error naming the place, and make auto-resume fall back.
#include <hdf5.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include "checkpoint/manifest.h"
#include "checkpoint/train_checkpoint.h"
#include "core/check.h"
#include "core/crc32c.h"
#include "model/model.h"
#include "train/resume_check.h"
#include "test_util.h"

namespace moekit::checkpoint {
namespace {

namespace fs = std::filesystem;

const char* const kGroups[] = {"master", "exp_avg", "exp_avg_sq"};

// Runs fn, expects a moekit::Error whose message holds every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << parts.front() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Tensor {
  Shape shape;
  std::vector<float> data;
};

// A small model's worth of tensors, with HF names, including a scalar and odd float values
// (NaN payload, -0, inf, subnormal) that a lossy path would not carry bit for bit.
std::map<std::string, Tensor> make_tensors(uint64_t seed) {
  std::map<std::string, Tensor> t;
  auto add = [&](const std::string& name, Shape shape) {
    t[name] = {shape, test::randn(static_cast<size_t>(shape_numel(shape)), seed, name)};
  };
  add("model.embed_tokens.weight", {16, 8});
  add("model.layers.0.self_attn.q_proj.bias", {8});
  add("model.layers.0.mlp.experts.3.down_proj.weight", {8, 6});
  add("model.layers.0.mlp.experts.gate_up", {4, 6, 8});
  add("lm_scale", {});
  auto& v = t["model.layers.0.self_attn.q_proj.bias"].data;
  uint32_t nan_bits = 0x7fc01234u;
  std::memcpy(&v[0], &nan_bits, 4);
  v[1] = -0.0f;
  v[2] = std::numeric_limits<float>::infinity();
  v[3] = std::numeric_limits<float>::denorm_min();
  return t;
}

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class TrainCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            ("moekit_ckpt_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(::getpid())))
               .string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes every tensor into the three groups (exp_avg / exp_avg_sq scaled so the groups
  // differ) from one rank and commits.
  std::string save(int64_t step, const std::map<std::string, Tensor>& t, int keep = 0,
                   nlohmann::json meta = nlohmann::json::object()) {
    TrainCheckpointWriter w(dir_, step);
    for (int g = 0; g < 3; ++g)
      for (const auto& [name, x] : t) w.write(kGroups[g], name, x.shape, scaled(x.data, g).data());
    w.close();
    return commit_checkpoint(dir_, step, meta, "seed: 1\n", keep);
  }

  static std::vector<float> scaled(std::vector<float> v, int g) {
    if (g > 0)
      for (float& x : v) x *= static_cast<float>(g + 1);
    return v;
  }

  std::string step_path(int64_t step) const { return (fs::path(dir_) / step_dir_name(step)).string(); }
  std::string rank_path(int64_t step, int rank = 0) const {
    return (fs::path(step_path(step)) / rank_file_name(rank)).string();
  }

  // Flips one byte in the middle of a dataset's data, found through HDF5 itself.
  static void corrupt_dataset(const std::string& file, const std::string& dataset) {
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
    ASSERT_GE(d, 0);
    const haddr_t off = H5Dget_offset(d);
    const hsize_t size = H5Dget_storage_size(d);
    H5Dclose(d);
    H5Fclose(f);
    ASSERT_NE(off, HADDR_UNDEF);
    ASSERT_GT(size, 0u);
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(static_cast<std::streamoff>(off + size / 2));
    char c = 0;
    io.read(&c, 1);
    c ^= 0x10;
    io.seekp(static_cast<std::streamoff>(off + size / 2));
    io.write(&c, 1);
    ASSERT_TRUE(io.good());
  }

  // What someone who edits a checkpoint and fixes up its manifest would do: the checks behind
  // the manifest must then still refuse the edit.
  static void reseal(const std::string& step_dir) { reseal_step_dir(step_dir); }

  std::string dir_;
};

// Runs fn in a child process and returns how far its peak RSS rose above this process's RSS
// at the fork (KiB), and whether fn threw moekit::Error (exit 1) or returned (exit 0).
struct ChildResult {
  long rss_rise_kib = 0;
  int exit_code = -1;  // -1: killed by a signal
};
ChildResult run_in_child(const std::function<void()>& fn) {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  const long base_kib = resident * (sysconf(_SC_PAGESIZE) / 1024);
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 0;
    try {
      fn();
    } catch (const Error&) {
      code = 1;
    } catch (...) {
      code = 2;
    }
    std::exit(code);  // exit(), not _exit(): the library's atexit handlers (HDF5's) run
  }
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  ChildResult r;
  r.rss_rise_kib = ru.ru_maxrss - base_kib;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// An int32 attribute `attr` on the object at `path` of file f (what another tool might add).
void add_int_attr(hid_t f, const char* path, const char* attr) {
  hid_t obj = H5Oopen(f, path, H5P_DEFAULT);
  hid_t sp = H5Screate(H5S_SCALAR);
  H5Aclose(H5Acreate2(obj, attr, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT));
  H5Sclose(sp);
  H5Oclose(obj);
}

// A 2-element f32 dataset at `path` with moekit's crc32c attribute, its creation properties set
// by `layout` (chunked, external storage: what moekit never writes).
void add_f32_dataset(hid_t f, const char* path, const std::function<void(hid_t)>& layout) {
  const hsize_t two = 2;
  const float v[2] = {1, 2};
  const uint32_t crc = crc32c(v, sizeof v);
  hid_t sp = H5Screate_simple(1, &two, nullptr), dcpl = H5Pcreate(H5P_DATASET_CREATE), asp = H5Screate(H5S_SCALAR);
  layout(dcpl);
  hid_t d = H5Dcreate2(f, path, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  hid_t a = H5Acreate2(d, "crc32c", H5T_STD_U32LE, asp, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_UINT32, &crc);
  H5Aclose(a);
  H5Dclose(d);
  H5Sclose(asp);
  H5Pclose(dcpl);
  H5Sclose(sp);
}

// Offset of the first occurrence of `needle` in the file (npos when absent).
size_t find_bytes(const std::string& file, const std::string& needle) { return read_text(file).find(needle); }

std::string u64_bytes(std::initializer_list<uint64_t> v) {
  std::string out;
  for (uint64_t x : v) out.append(reinterpret_cast<const char*>(&x), 8);
  return out;
}

void patch_file(const std::string& file, size_t off, const std::string& bytes) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(static_cast<std::streamoff>(off));
  io.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(io.good());
}

TEST_F(TrainCheckpoint, RoundTripIsBitExact) {
  const auto t = make_tensors(7);
  const std::string out = save(100, t);
  EXPECT_EQ(out, step_path(100));
  TrainCheckpointReader r(out);
  EXPECT_EQ(r.step(), 100);
  for (int g = 0; g < 3; ++g) {
    std::vector<std::string> expect_names;
    for (const auto& [name, x] : t) {
      expect_names.push_back(name);
      ASSERT_TRUE(r.has(kGroups[g], name)) << name;
      EXPECT_EQ(r.shape(kGroups[g], name), x.shape) << name;
      std::vector<float> back(x.data.size(), 123.f);
      r.read(kGroups[g], name, back.data());
      EXPECT_TRUE(bits_equal(back, scaled(x.data, g))) << kGroups[g] << "/" << name;
    }
    EXPECT_EQ(r.names(kGroups[g]), expect_names);
  }
  r.check_shape("exp_avg", "model.embed_tokens.weight", {16, 8});
  expect_error([&] { r.check_shape("exp_avg", "model.embed_tokens.weight", {16, 9}); },
               {out, "/exp_avg/model.embed_tokens.weight", "[16, 8]", "[16, 9]"});
  EXPECT_FALSE(r.has("master", "model.norm.weight"));
  EXPECT_TRUE(r.names("momentum").empty());
  expect_error([&] { r.shape("master", "model.norm.weight"); }, {out, "/master/model.norm.weight"});
  r.verify_all();
  // A row range of a whole tensor reads just those rows.
  const auto& emb = t.at("model.embed_tokens.weight");
  std::vector<float> rows(3 * 8);
  r.read("master", "model.embed_tokens.weight", rows.data(), 5, 3);
  EXPECT_TRUE(bits_equal(rows, std::vector<float>(emb.data.begin() + 5 * 8, emb.data.begin() + 8 * 8)));
  expect_error([&] { r.read("master", "model.embed_tokens.weight", rows.data(), 14, 3); },
               {"/master/model.embed_tokens.weight", "rows [14, 14 + 3)"});
}

TEST_F(TrainCheckpoint, MetaAndConfigRoundTrip) {
  nlohmann::json meta = {{"tokens", 123456789012LL},
                         {"rng", {{"seed", 42}, {"offset", 7}}},
                         {"loader", {{"epoch", 2}, {"cursor", {1, 2, 3}}}},
                         {"scaler", {{"scale", 65536.0}, {"growth_tracker", 3}}},
                         {"layout", {{"world_size", 1}, {"ep", 1}}}};
  const std::string out = save(5, make_tensors(1), 0, meta);
  TrainCheckpointReader r(out);
  nlohmann::json expect = meta;
  expect["step"] = 5;
  expect["files"] = {"rank_00000.h5"};
  EXPECT_EQ(r.meta(), expect);
  EXPECT_EQ(read_text(fs::path(out) / "config.resolved.yaml"), "seed: 1\n");
  // The trainer may pass its own step, but it must agree.
  TrainCheckpointWriter w(dir_, 6);
  w.write("master", "x", {1}, std::vector<float>{1.f}.data());
  w.close();
  expect_error([&] { commit_checkpoint(dir_, 6, {{"step", 7}}, "", 0); }, {"meta step 7", "step 6"});
}

TEST_F(TrainCheckpoint, KeepsNewestKAndPointsLatestAtTheLastCommit) {
  const auto t = make_tensors(3);
  for (int64_t s = 10; s <= 50; s += 10) save(s, t, /*keep=*/2);
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{step_path(40), step_path(50)}));
  EXPECT_EQ(read_text(fs::path(dir_) / "latest"), "step_00000050\n");
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(50));
  // keep <= 0 keeps everything.
  save(60, t, 0);
  save(70, t, -1);
  EXPECT_EQ(list_checkpoints(dir_).size(), 4u);
  // Nothing but step directories and `latest` remains: no temp files.
  std::vector<std::string> entries;
  for (const auto& e : fs::directory_iterator(dir_)) entries.push_back(e.path().filename().string());
  std::sort(entries.begin(), entries.end());
  EXPECT_EQ(entries, (std::vector<std::string>{"latest", "step_00000040", "step_00000050", "step_00000060",
                                               "step_00000070"}));
}

TEST_F(TrainCheckpoint, ListingAndNaming) {
  EXPECT_TRUE(list_checkpoints(dir_ + "/absent").empty());
  EXPECT_EQ(resolve_resume(dir_ + "/absent", "auto"), "");
  EXPECT_EQ(resolve_resume(dir_, ""), "");
  EXPECT_EQ(resolve_resume(dir_, "none"), "");
  EXPECT_EQ(step_dir_name(100), "step_00000100");
  EXPECT_EQ(step_dir_name(1234567890), "step_1234567890");
  int64_t s = 0;
  EXPECT_TRUE(parse_step_dir_name("step_1234567890", &s));
  EXPECT_EQ(s, 1234567890);
  EXPECT_FALSE(parse_step_dir_name("step_00000100.tmp", &s));
  EXPECT_FALSE(parse_step_dir_name("step_", &s));
  EXPECT_FALSE(parse_step_dir_name("step_-1", &s));
  // Steps sort numerically, not by name length.
  const auto t = make_tensors(2);
  save(9, t);
  save(123456789, t);
  save(10, t);
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{step_path(9), step_path(10), step_path(123456789)}));
}

// Expert parallelism: two ranks each hold half the rows of an expert tensor and write them
// into the same step; the reader assembles them whatever range is asked for.
TEST_F(TrainCheckpoint, RowPiecesFromTwoRanksReadWholeAndAsRanges) {
  const Shape full = {8, 3, 2};
  const int64_t row = 6;
  const auto x = test::randn(8 * row, 11, "experts");
  const auto dense = test::randn(5, 11, "dense");
  {
    TrainCheckpointWriter w0(dir_, 20, 0);
    TrainCheckpointWriter w1(dir_, 20, 1, /*create_dir=*/false);
    w0.write("master", "model.layers.1.mlp.experts.w1", {4, 3, 2}, x.data(), 0, 8);
    w1.write("master", "model.layers.1.mlp.experts.w1", {4, 3, 2}, x.data() + 4 * row, 4, 8);
    w0.write("master", "model.norm.weight", {5}, dense.data());  // dense: rank 0 only
    w1.close();
    w0.close();
  }
  commit_checkpoint(dir_, 20, {{"world_size", 2}}, "", 0);
  TrainCheckpointReader r(step_path(20));
  EXPECT_EQ(r.meta()["files"], nlohmann::json({"rank_00000.h5", "rank_00001.h5"}));
  EXPECT_EQ(r.shape("master", "model.layers.1.mlp.experts.w1"), full);
  std::vector<float> whole(8 * row);
  r.read("master", "model.layers.1.mlp.experts.w1", whole.data());
  EXPECT_TRUE(bits_equal(whole, x));
  // Rows [2, 7): the end of rank 0's piece and most of rank 1's.
  std::vector<float> mid(5 * row);
  r.read("master", "model.layers.1.mlp.experts.w1", mid.data(), 2, 5);
  EXPECT_TRUE(bits_equal(mid, std::vector<float>(x.begin() + 2 * row, x.begin() + 7 * row)));
  // Exactly rank 1's rows, as an EP=2 rank 1 resuming would ask.
  std::vector<float> second(4 * row);
  r.read("master", "model.layers.1.mlp.experts.w1", second.data(), 4);
  EXPECT_TRUE(bits_equal(second, std::vector<float>(x.begin() + 4 * row, x.end())));
  std::vector<float> d(5);
  r.read("master", "model.norm.weight", d.data());
  EXPECT_TRUE(bits_equal(d, dense));
  r.verify_all();
}

TEST_F(TrainCheckpoint, MissingOrOverlappingRowsAreErrors) {
  const auto x = test::randn(8 * 2, 5, "e");
  {
    TrainCheckpointWriter w(dir_, 1);
    w.write("master", "e", {3, 2}, x.data(), 0, 8);      // rows [0, 3)
    w.write("master", "f", {2, 2}, x.data() + 8, 4, 8);  // rows [4, 6)
    w.close();
  }
  commit_checkpoint(dir_, 1, {}, "", 0);
  TrainCheckpointReader r(step_path(1));
  std::vector<float> out(16);
  r.read("master", "e", out.data(), 0, 3);
  out.resize(6);
  EXPECT_TRUE(bits_equal(out, std::vector<float>(x.begin(), x.begin() + 6)));
  out.resize(16);
  expect_error([&] { r.read("master", "e", out.data()); }, {"/master/e", "rows [3, 8)", "none of its files"});
  expect_error([&] { r.read("master", "f", out.data(), 2, 4); }, {"/master/f", "rows [2, 4)", "none of its files"});

  {
    TrainCheckpointWriter w0(dir_, 2, 0), w1(dir_, 2, 1, false);
    w0.write("master", "e", {5, 2}, x.data(), 0, 8);
    w1.write("master", "e", {4, 2}, x.data(), 4, 8);  // row 4 twice
    w0.close();
    w1.close();
  }
  commit_checkpoint(dir_, 2, {}, "", 0);
  expect_error([&] { TrainCheckpointReader bad(step_path(2)); }, {"rank_0000", "/master/e", "overlap"});
}

TEST_F(TrainCheckpoint, FlippedDataByteIsACrcErrorNamingTheDataset) {
  const auto t = make_tensors(4);
  save(1, t);
  save(2, t);
  corrupt_dataset(rank_path(2), "/exp_avg/model.layers.0.mlp.experts.3.down_proj.weight");
  // The manifest's whole-file checksum catches it before HDF5 reads the file...
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {rank_path(2), "does not match the checkpoint's manifest"});
  // ...and behind it, with the manifest re-made, each dataset's own checksum.
  reseal(step_path(2));
  TrainCheckpointReader r(step_path(2));  // structure is intact: opening succeeds
  std::vector<float> out(48);
  for (const auto& fn : std::vector<std::function<void()>>{
           [&] { r.read("exp_avg", "model.layers.0.mlp.experts.3.down_proj.weight", out.data()); },
           [&] { r.read("exp_avg", "model.layers.0.mlp.experts.3.down_proj.weight", out.data(), 7, 1); },
           [&] { r.verify_all(); }})
    expect_error(fn, {rank_path(2), "/exp_avg/model.layers.0.mlp.experts.3.down_proj.weight", "crc32c mismatch"});
  // The same tensor in another group is untouched.
  r.read("master", "model.layers.0.mlp.experts.3.down_proj.weight", out.data());
  EXPECT_TRUE(bits_equal(out, t.at("model.layers.0.mlp.experts.3.down_proj.weight").data));
  // Auto-resume skips the corrupt newest checkpoint; naming it explicitly is an error.
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
  expect_error([&] { resolve_resume(dir_, step_path(2)); }, {"/exp_avg/model.layers.0", "crc32c mismatch"});
}

TEST_F(TrainCheckpoint, AutoResumeFallsBackWhenMetaIsMissing) {
  const auto t = make_tensors(5);
  save(1, t);
  save(2, t);
  save(3, t);
  fs::remove(fs::path(step_path(3)) / "meta.json");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {step_path(3), "meta.json", "missing"});
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(2));
  // Without `latest`, every committed directory is a candidate, newest first.
  fs::remove(fs::path(dir_) / "latest");
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(2));
  // Every checkpoint bad: an error, not a silent fresh start over them.
  fs::remove(fs::path(step_path(2)) / "meta.json");
  fs::remove(fs::path(step_path(1)) / "meta.json");
  expect_error([&] { resolve_resume(dir_, "auto"); }, {dir_, "no checkpoint verifies", step_path(1)});
}

TEST_F(TrainCheckpoint, ExplicitResumePaths) {
  save(4, make_tensors(6));
  EXPECT_EQ(resolve_resume(dir_, step_path(4)), step_path(4));
  EXPECT_EQ(resolve_resume(dir_, "step_00000004"), step_path(4));  // a name inside ckpt_dir
  expect_error([&] { resolve_resume(dir_, dir_ + "/step_00000099"); }, {"step_00000099"});
  fs::create_directories(fs::path(dir_) / "not_a_ckpt");
  expect_error([&] { resolve_resume(dir_, dir_ + "/not_a_ckpt"); }, {"not_a_ckpt", "manifest.json", "missing"});
}

TEST_F(TrainCheckpoint, MetaFieldsAreValidated) {
  save(3, make_tensors(8));
  const fs::path meta = fs::path(step_path(3)) / "meta.json";
  // Each edit passes the manifest (re-made around it) and must fail on its own merits.
  auto rewrite = [&](const std::string& text) {
    std::ofstream(meta, std::ios::trunc) << text;
    reseal(step_path(3));
  };
  rewrite(R"({"step": "3", "files": ["rank_00000.h5"]})");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "'step'"});
  rewrite(R"({"step": 3})");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "'files'"});
  rewrite(R"({"step": 3, "files": ["../rank_00000.h5"]})");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "invalid file name"});
  rewrite(R"({"step": 3, "files": ["rank_00007.h5"]})");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {"rank_00007.h5", "manifest does not"});
  rewrite(R"({"step": 3, "files": ["rank_00000.h5"], "world_size": 2})");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "world_size 2"});
  rewrite(R"({"step": 3, "files": ["rank_00000.h5"], "x": )" + std::string(100000, '[') + std::string(100000, ']') + "}");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "nests deeper"});
  rewrite(R"({"step": 3, "step": 3, "files": ["rank_00000.h5"]})");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "duplicate key 'step'"});
  rewrite(R"({"step": 4, "files": ["rank_00000.h5"]})");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "step 4 disagrees"});
  rewrite(R"({"step": 3, "files": ["rank_00000.h5"]}  trailing)");
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {meta.string(), "not valid JSON"});
}

TEST_F(TrainCheckpoint, TruncatedFileFailsCleanly) {
  const auto t = make_tensors(9);
  save(1, t);
  save(2, t);
  const std::string f = rank_path(2);
  fs::resize_file(f, fs::file_size(f) / 2);
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {f, "the manifest says"});
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
  reseal(step_path(2));  // HDF5 itself refuses the truncated file, too
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {f, "HDF5"});
}

TEST_F(TrainCheckpoint, NonF32DatasetIsRefused) {
  save(1, make_tensors(10));
  hid_t f = H5Fopen(rank_path(1).c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hsize_t dim = 2;
  hid_t space = H5Screate_simple(1, &dim, nullptr);
  hid_t d = H5Dcreate2(f, "/master/as_f64", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  H5Dclose(d);
  H5Sclose(space);
  H5Fclose(f);
  reseal(step_path(1));
  expect_error([&] { TrainCheckpointReader r(step_path(1)); }, {rank_path(1), "/master/as_f64", "f32"});
}

// A crash before commit leaves step_N.tmp: it is invisible to listing and resume, and the
// next commit removes it.
TEST_F(TrainCheckpoint, LeftoverTmpIsIgnoredAndCleanedByTheNextCommit) {
  const auto t = make_tensors(12);
  save(1, t);
  {
    TrainCheckpointWriter w(dir_, 2);
    w.write("master", "model.embed_tokens.weight", {16, 8}, t.at("model.embed_tokens.weight").data.data());
    // no close, no commit: the process "dies" here
  }
  const fs::path tmp = fs::path(dir_) / "step_00000002.tmp";
  ASSERT_TRUE(fs::is_directory(tmp));
  EXPECT_TRUE(fs::exists(tmp / "rank_00000.h5.partial"));
  EXPECT_EQ(list_checkpoints(dir_), std::vector<std::string>{step_path(1)});
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
  // A commit of that step now refuses the never-closed rank file.
  expect_error([&] { commit_checkpoint(dir_, 2, {}, "", 0); }, {"rank_00000.h5.partial", "never closed"});
  save(3, t);
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{step_path(1), step_path(3)}));
}

// After resuming from step 1, training reaches step 2 again: the new step_2 replaces the old
// one, `latest` follows, and a later step of the abandoned run is left alone but not resumed.
TEST_F(TrainCheckpoint, RecommittingAStepReplacesIt) {
  const auto a = make_tensors(13), b = make_tensors(14);
  save(1, a);
  save(2, a);
  save(3, a);
  save(2, b, /*keep=*/2);
  EXPECT_EQ(read_text(fs::path(dir_) / "latest"), "step_00000002\n");
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{step_path(1), step_path(2), step_path(3)}));
  EXPECT_FALSE(fs::exists(fs::path(dir_) / "step_00000002.tmp"));
  TrainCheckpointReader r(step_path(2));
  const auto& x = b.at("model.embed_tokens.weight");
  std::vector<float> out(x.data.size());
  r.read("master", "model.embed_tokens.weight", out.data());
  EXPECT_TRUE(bits_equal(out, x.data));
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(2));
  // Pruning counts only this run's line: step 1 goes at keep=1, step 3 stays.
  save(2, b, /*keep=*/1);
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{step_path(2), step_path(3)}));
}

TEST_F(TrainCheckpoint, WriterMisuseIsAnError) {
  const std::vector<float> v(6, 1.f);
  expect_error([&] { TrainCheckpointWriter w(dir_, 1, 1, /*create_dir=*/false); }, {"step_00000001.tmp", "barrier"});
  TrainCheckpointWriter w(dir_, 1);
  w.write("master", "a.b", {2, 3}, v.data());
  expect_error([&] { w.write("master", "a.b", {2, 3}, v.data()); }, {"/master/a.b", "twice"});
  expect_error([&] { w.write("master", "a/b", {2, 3}, v.data()); }, {"a/b", "invalid dataset name"});
  expect_error([&] { w.write("master", "c", {2, 3}, v.data(), 3, 4); }, {"/master/c", "do not fit"});
  expect_error([&] { w.write("master", "c", {2, 3}, v.data(), 1); }, {"/master/c", "full_rows"});
  w.close();
  expect_error([&] { w.write("master", "d", {1}, v.data()); }, {"write after close"});
  expect_error([&] { commit_checkpoint(dir_, 5, {}, "", 0); }, {"step_00000005.tmp", "does not exist"});
  // A refused commit publishes nothing and removes the step's temp directory.
  expect_error([&] { commit_checkpoint(dir_, 1, {{"world_size", 2}}, "", 0); }, {"world_size 2", "1 rank file"});
  EXPECT_FALSE(fs::exists(fs::path(dir_) / "step_00000001.tmp"));
  EXPECT_TRUE(list_checkpoints(dir_).empty());
  TrainCheckpointWriter w2(dir_, 1);
  w2.write("master", "a.b", {2, 3}, v.data());
  w2.close();
  commit_checkpoint(dir_, 1, {{"world_size", 1}}, "", 0);
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
}


// meta.json and config.resolved.yaml are covered like the rank files: an edit that changes the
// resumed run (the loader's epoch) is refused, and auto-resume falls back past it, saying why.
TEST_F(TrainCheckpoint, ManifestCoversEveryFileOfTheStep) {
  const auto t = make_tensors(20);
  save(1, t, 0, {{"loader", {{"epoch", 0}}}});
  save(2, t, 0, {{"loader", {{"epoch", 0}}}});
  const fs::path meta = fs::path(step_path(2)) / "meta.json";
  std::string text = read_text(meta);
  const size_t at = text.find("\"epoch\": 0");
  ASSERT_NE(at, std::string::npos) << text;
  text[at + 9] = '5';
  std::ofstream(meta, std::ios::trunc) << text;
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {meta.string(), "does not match the checkpoint's manifest"});
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
  save(3, t);
  std::ofstream(fs::path(step_path(3)) / "config.resolved.yaml", std::ios::app) << "seed: 2\n";
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {"config.resolved.yaml", "the manifest says"});
  save(4, t);
  std::ofstream(fs::path(step_path(4)) / "rank_00001.h5") << "x";
  expect_error([&] { TrainCheckpointReader r(step_path(4)); }, {"rank_00001.h5", "not listed in the checkpoint's manifest"});
  save(5, t);
  fs::remove(fs::path(step_path(5)) / "config.resolved.yaml");
  expect_error([&] { TrainCheckpointReader r(step_path(5)); }, {"config.resolved.yaml", "missing"});
  save(6, t);
  fs::remove(fs::path(step_path(6)) / kManifestName);
  expect_error([&] { TrainCheckpointReader r(step_path(6)); }, {"manifest.json", "missing"});
  save(7, t);
  std::ofstream(fs::path(step_path(7)) / kManifestName, std::ios::trunc) << R"({"format": "moekit-train-checkpoint", "version": 1, "step": 7, "step": 7})";
  expect_error([&] { TrainCheckpointReader r(step_path(7)); }, {"manifest.json", "duplicate key 'step'"});
  // Fields of other types than moekit writes: moekit errors naming the manifest, never nlohmann's
  // type_error (fuzz_train_checkpoint found "format": 128 escaping as one).
  for (const char* text : {R"({"format": 128, "version": 1, "step": 7, "files": {}})",
                           R"({"format": "moekit-train-checkpoint", "version": "1", "step": 7, "files": {}})",
                           R"({"format": "moekit-train-checkpoint", "version": 1, "step": 7.5, "files": {}})",
                           R"({"format": "moekit-train-checkpoint", "version": 1, "step": 7, "files": []})"}) {
    std::ofstream(fs::path(step_path(7)) / kManifestName, std::ios::trunc) << text;
    expect_error([&] { TrainCheckpointReader r(step_path(7)); }, {"manifest.json"});
  }
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
}

// A rank file copied in from another step (same tensors, same shapes, checksums intact) was
// accepted by resume and export; it is refused by the manifest and, behind it, by the step the
// writer stamped into the file.
TEST_F(TrainCheckpoint, RankFileFromAnotherStepIsRefused) {
  const auto t = make_tensors(21);
  save(1, t);
  save(2, t);
  fs::copy_file(rank_path(1), rank_path(2), fs::copy_options::overwrite_existing);
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {rank_path(2), "manifest"});
  reseal(step_path(2));
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {rank_path(2), "written for step 1, not 2"});
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
  // The same for a file renamed to another rank's name.
  {
    TrainCheckpointWriter w0(dir_, 3, 0), w1(dir_, 3, 1, false);
    w0.write("master", "a", {2}, std::vector<float>{1, 2}.data());
    w1.write("master", "b", {2}, std::vector<float>{3, 4}.data());
    w0.close();
    w1.close();
    commit_checkpoint(dir_, 3, {}, "", 0);
  }
  fs::rename(rank_path(3, 1), fs::path(step_path(3)) / "rank_00002.h5");
  std::string meta = read_text(fs::path(step_path(3)) / "meta.json");
  meta.replace(meta.find("rank_00001.h5"), 13, "rank_00002.h5");
  std::ofstream(fs::path(step_path(3)) / "meta.json", std::ios::trunc) << meta;
  reseal(step_path(3));
  expect_error([&] { TrainCheckpointReader r(step_path(3)); }, {"rank_00002.h5", "written by rank 1"});
}

// What the writer never produces is refused, even with a manifest made to match: soft and
// external links, objects other than groups of datasets, foreign attributes, chunked or
// external storage.
TEST_F(TrainCheckpoint, LinksAndForeignObjectsAreRefused) {
  const auto t = make_tensors(22);
  struct Case {
    const char* what;
    std::function<void(hid_t)> edit;
    std::vector<std::string> error;
  };
  const std::vector<Case> cases = {
      {"soft link", [](hid_t f) { H5Lcreate_soft("/master/lm_scale", f, "/master/alias", H5P_DEFAULT, H5P_DEFAULT); },
       {"alias", "soft link"}},
      {"external link",
       [](hid_t f) { H5Lcreate_external("/etc/other.h5", "/x", f, "/master/ext", H5P_DEFAULT, H5P_DEFAULT); },
       {"ext", "external link"}},
      {"extra group attribute", [](hid_t f) { add_int_attr(f, "master", "note"); },
       {"group /master", "unexpected attribute 'note'"}},
      {"extra dataset attribute", [](hid_t f) { add_int_attr(f, "/master/lm_scale", "units"); },
       {"/master/lm_scale", "unexpected attribute 'units'"}},
      {"named datatype",
       [](hid_t f) {
         hid_t ty = H5Tcopy(H5T_NATIVE_INT);
         H5Tcommit2(f, "/master/type", ty, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
         H5Tclose(ty);
       },
       {"/master/type", "expected a dataset"}},
      {"chunked dataset",
       [](hid_t f) {
         add_f32_dataset(f, "/master/chunked", [](hid_t dcpl) {
           const hsize_t two = 2;
           H5Pset_chunk(dcpl, 1, &two);
         });
       },
       {"/master/chunked", "not contiguous"}},
      {"external storage",
       [](hid_t f) {
         add_f32_dataset(f, "/master/outside", [](hid_t dcpl) { H5Pset_external(dcpl, "/etc/passwd", 0, 8); });
       },
       {"/master/outside", "external files"}},
      {"extra root attribute", [](hid_t f) { add_int_attr(f, "/", "world"); }, {"unexpected attribute 'world'"}},
  };
  int64_t step = 1;
  for (const Case& c : cases) {
    save(step, t);
    const std::string file = rank_path(step);
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0) << c.what;
    c.edit(f);
    H5Fclose(f);
    reseal(step_path(step));
    std::vector<std::string> want = c.error;
    want.push_back(file);
    expect_error([&] { TrainCheckpointReader r(step_path(step)); }, want);
    ++step;
  }
}

// One flipped bit in a tensor's stored shape once made verification allocate the new size
// (2.28 GB, or a bare std::bad_alloc): the storage check refuses it when the file is opened,
// before anything is sized from it.
TEST_F(TrainCheckpoint, FlippedShapeBitIsRefusedWithoutAllocating) {
  const auto t = make_tensors(23);
  save(1, t);
  save(2, t);
  const std::string file = rank_path(2);
  // model.embed_tokens.weight is (16, 8): its dataspace stores the two dims as 8-byte integers.
  const size_t at = find_bytes(file, u64_bytes({16, 8}));
  ASSERT_NE(at, std::string::npos);
  patch_file(file, at, u64_bytes({16 | (uint64_t{1} << 30), 8}));  // 2^33 floats: 32 GiB
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {file, "manifest"});
  reseal(step_path(2));
  expect_error([&] { TrainCheckpointReader r(step_path(2)); }, {file, "stores 512 bytes, but its shape needs"});
  const ChildResult child = run_in_child([&] {
    TrainCheckpointReader r(step_path(2));
    r.verify_all();
  });
  EXPECT_EQ(child.exit_code, 1);  // a moekit::Error, not std::bad_alloc (2) or a crash (-1)
  EXPECT_LT(child.rss_rise_kib, 64 * 1024) << "peak RSS rose by " << child.rss_rise_kib << " KiB";
  EXPECT_EQ(resolve_resume(dir_, "auto"), step_path(1));
}

// A full disk (here a file-size limit, EFBIG) in the middle of writing a rank file: a clear
// error naming the file, no crash at exit (HDF5's exit handler once crashed in H5F__close_cb on
// the file whose close had failed), HDF5 still usable for the next checkpoint, the committed
// checkpoints untouched.
TEST_F(TrainCheckpoint, DiskFullWhileWritingFailsCleanly) {
  const auto t = make_tensors(24);
  save(1, t);
  const std::vector<float> big(1 << 20, 0.5f);  // 4 MiB against a 1 MiB limit
  const ChildResult child = run_in_child([&] {
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {1 << 20, 1 << 20};
    setrlimit(RLIMIT_FSIZE, &lim);
    bool threw = false;
    try {
      TrainCheckpointWriter w(dir_, 2);
      w.write("master", "big", {1 << 20}, big.data());
      w.close();
      commit_checkpoint(dir_, 2, {}, "", 0);
    } catch (const Error& e) {
      threw = std::string(e.what()).find("step_00000002.tmp/rank_00000.h5") != std::string::npos;
    }
    if (!threw) std::exit(3);
    try {  // a small checkpoint still fits under the limit and commits
      TrainCheckpointWriter w(dir_, 3);
      w.write("master", "small", {4}, big.data());
      w.close();
      commit_checkpoint(dir_, 3, {}, "", 0);
    } catch (const Error&) {
      std::exit(5);
    }
    throw Error("disk full, handled");  // exit 1, through exit() and its handlers
  });
  EXPECT_EQ(child.exit_code, 1) << "3: no error naming the file, 5: the next checkpoint failed, -1: crashed";
  EXPECT_EQ(read_text(fs::path(dir_) / "latest"), "step_00000003\n");
  EXPECT_EQ(list_checkpoints(dir_), (std::vector<std::string>{step_path(1), step_path(3)}));
  TrainCheckpointReader(step_path(1)).verify_all();
}

}  // namespace
// meta.json's expert_bias (aux-loss-free balancing): read back exactly, and every malformed
// form refused naming the layer, before resume=auto commits to the checkpoint.
TEST(ResumeCheck, ExpertBiasInMetaIsCheckedAndReadBack) {
  auto cfg = config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/tiny-moe.yaml");
  cfg.moe_router_enable_expert_bias = true;
  cfg.mlp_only_layers = {1};
  const int64_t E = cfg.num_experts;
  nlohmann::json meta;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    if (l != 1) {
      std::vector<float> b(E);
      for (int64_t e = 0; e < E; ++e) b[e] = 0.001f * static_cast<float>(e - l) + 1e-7f;
      meta["expert_bias"][model::expert_bias_name(l)] = b;
    }
  const std::string name0_s = model::expert_bias_name(0);
  const char* name0 = name0_s.c_str();
  const auto bias = train::read_expert_bias(meta, cfg, "m.json");
  ASSERT_EQ(static_cast<int64_t>(bias.size()), cfg.num_hidden_layers);
  EXPECT_TRUE(bias[1].empty());
  EXPECT_EQ(bias[0], meta["expert_bias"][name0].get<std::vector<float>>());  // the same bits

  auto broken = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json m = meta;
    edit(m);
    return m;
  };
  MOEKIT_EXPECT_ERROR_HAS(train::read_expert_bias(broken([](auto& m) { m.erase("expert_bias"); }), cfg, "m.json"),
                          "m.json", "'expert_bias' is missing");
  MOEKIT_EXPECT_ERROR_HAS(
      train::read_expert_bias(broken([&](auto& m) { m["expert_bias"].erase(name0); }), cfg, "m.json"), name0,
      "array of num_experts");
  MOEKIT_EXPECT_ERROR_HAS(
      train::read_expert_bias(broken([&](auto& m) { m["expert_bias"][name0].erase(0); }), cfg, "m.json"), name0,
      "array of num_experts");
  MOEKIT_EXPECT_ERROR_HAS(
      train::read_expert_bias(broken([&](auto& m) { m["expert_bias"][name0][2] = "x"; }), cfg, "m.json"), name0);
  MOEKIT_EXPECT_ERROR_HAS(
      train::read_expert_bias(broken([&](auto& m) { m["expert_bias"][name0][2] = 1e300; }), cfg, "m.json"), name0);
  cfg.moe_router_enable_expert_bias = false;  // not read at all without the bias
  EXPECT_TRUE(train::read_expert_bias(nlohmann::json::object(), cfg, "m.json")[0].empty());
}

}  // namespace moekit::checkpoint
