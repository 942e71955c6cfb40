// Test tool: damages a committed training checkpoint the way an unchecked writer or a careful
// hand would, keeping every checksum consistent (the dataset's crc32c attribute, the step's
// manifest), so that the checks behind them are what the fault tests exercise.
//   ckpt_tool poison STEP_DIR GROUP NAME   element 0 of /GROUP/NAME becomes NaN
//   ckpt_tool drop STEP_DIR GROUP NAME     /GROUP/NAME is removed
//   ckpt_tool reseal STEP_DIR              only re-make manifest.json
//   ckpt_tool crcs STEP_DIR                print "/GROUP/NAME crc32c" of every dataset, sorted:
//                                          two checkpoints hold the same state iff these agree
//   ckpt_tool sample CKPT_DIR              write a tiny checkpoint (step 4: a matrix, a vector and
//                                          a scalar in each group) with the real writer: the
//                                          training-checkpoint fuzzer's seed
#include <hdf5.h>

#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "checkpoint/manifest.h"
#include "checkpoint/train_checkpoint.h"
#include "core/crc32c.h"

namespace fs = std::filesystem;

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "ckpt_tool: %s\n", msg.c_str());
  return 1;
}

// The rank file of STEP_DIR that holds /group/name, opened read-write (-1 when none does).
hid_t open_holding(const std::string& dir, const std::string& path_in_file) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string p = e.path().string();
    if (e.path().extension() != ".h5") continue;
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) continue;
    if (H5Lexists(f, path_in_file.c_str(), H5P_DEFAULT) > 0) return f;
    H5Fclose(f);
  }
  return -1;
}

int poison(hid_t f, const std::string& path_in_file) {
  hid_t d = H5Dopen2(f, path_in_file.c_str(), H5P_DEFAULT);
  if (d < 0) return fail("cannot open " + path_in_file);
  hid_t space = H5Dget_space(d);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  H5Sclose(space);
  std::vector<float> v(static_cast<size_t>(n));
  int rc = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0;
  v[0] = std::numeric_limits<float>::quiet_NaN();
  rc |= H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0;
  const uint32_t crc = moekit::crc32c(v.data(), v.size() * sizeof(float));
  hid_t a = H5Aopen(d, "crc32c", H5P_DEFAULT);
  rc |= a < 0 || H5Awrite(a, H5T_NATIVE_UINT32, &crc) < 0;
  if (a >= 0) H5Aclose(a);
  H5Dclose(d);
  return rc ? fail("cannot rewrite " + path_in_file) : 0;
}

}  // namespace

// Every dataset's stored checksum, through the checking reader (which verified them all).
int print_crcs(const std::string& dir) {
  moekit::checkpoint::TrainCheckpointReader r(dir);
  r.verify_all();
  for (const std::string& g : r.groups())
    for (const std::string& n : r.names(g)) {
      const moekit::Shape shape = r.shape(g, n);
      std::vector<float> v(static_cast<size_t>(moekit::shape_numel(shape)));
      r.read(g, n, v.data());
      std::printf("/%s/%s %08x\n", g.c_str(), n.c_str(), moekit::crc32c(v.data(), v.size() * sizeof(float)));
    }
  return 0;
}

int write_sample(const std::string& ckpt_dir) {
  using moekit::checkpoint::TrainCheckpointWriter;
  const std::vector<float> v = {0.5f, -1.f, 2.f, 0.25f, 3.f, -0.125f};
  TrainCheckpointWriter w(ckpt_dir, 4);
  for (const char* g : {"master", "exp_avg", "exp_avg_sq"}) {
    w.write(g, "model.embed_tokens.weight", {2, 3}, v.data());
    w.write(g, "model.norm.weight", {3}, v.data());
    w.write(g, "scale", {}, v.data());
  }
  w.close();
  moekit::checkpoint::commit_checkpoint(ckpt_dir, 4, {{"tokens", 128}, {"loader", {{"epoch", 0}}}}, "seed: 1\n", 0);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return fail("usage: ckpt_tool poison|drop STEP_DIR GROUP NAME | reseal|crcs STEP_DIR | sample CKPT_DIR");
  const std::string cmd = argv[1], dir = argv[2];
  if (cmd == "crcs" || cmd == "sample") {
    try {
      return cmd == "crcs" ? print_crcs(dir) : write_sample(dir);
    } catch (const std::exception& e) {
      return fail(e.what());
    }
  }
  if (cmd != "reseal") {
    if (argc != 5) return fail("poison and drop take STEP_DIR GROUP NAME");
    const std::string path_in_file = "/" + std::string(argv[3]) + "/" + argv[4];
    hid_t f = open_holding(dir, path_in_file);
    if (f < 0) return fail("no rank file of " + dir + " holds " + path_in_file);
    int rc = 0;
    if (cmd == "poison") rc = poison(f, path_in_file);
    else if (cmd == "drop") rc = H5Ldelete(f, path_in_file.c_str(), H5P_DEFAULT) < 0 ? fail("cannot drop") : 0;
    else rc = fail("unknown command '" + cmd + "'");
    H5Fclose(f);
    if (rc) return rc;
  }
  try {
    moekit::checkpoint::reseal_step_dir(dir);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return 0;
}
