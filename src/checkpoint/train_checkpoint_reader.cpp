// Reading side of the HDF5 training checkpoints. The constructor validates meta.json, opens
// every listed rank file and indexes its datasets into pieces (which file holds which rows of
// which tensor), checking dtype, shapes and attributes up front; read() assembles a row range
// from the pieces and verifies each piece's crc32c before handing out a byte of it.
//
// The files are our own (reliability-ecosystem.md 1.1: never load a foreign HDF5 checkpoint),
// but they may be truncated or bit-rotted, so nothing read from them is used unchecked.
#include "checkpoint/train_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "checkpoint/hdf5_util.h"
#include "core/check.h"
#include "core/crc32c.h"

namespace moekit::checkpoint {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxRank = 8;  // no parameter has more dimensions; more means a damaged header

// Rows [row_offset, row_offset + rows) of a tensor, stored as one dataset in one file.
struct Piece {
  int file = 0;
  int64_t row_offset = 0, rows = 0;
  int64_t numel = 0;
  uint32_t crc = 0;
};

struct Entry {
  Shape full;                 // the whole tensor's shape
  std::vector<Piece> pieces;  // sorted by row_offset, disjoint
  int64_t full_rows() const { return full.empty() ? 1 : full[0]; }  // a scalar is one row
  int64_t row_numel() const {
    int64_t n = 1;
    for (size_t i = 1; i < full.size(); ++i) n *= full[i];
    return n;
  }
};

// Names of the links in a group, in name order.
std::vector<std::string> link_names(hid_t group, const std::string& where) {
  H5G_info_t info;
  h5::check(H5Gget_info(group, &info), where, "H5Gget_info");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t len = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    h5::check(len, where, "H5Lget_name_by_idx");
    std::string name(static_cast<size_t>(len) + 1, '\0');
    h5::check(H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT),
              where, "H5Lget_name_by_idx");
    name.resize(static_cast<size_t>(len));
    names.push_back(std::move(name));
  }
  return names;
}

nlohmann::json load_meta(const std::string& dir) {
  const std::string path = (fs::path(dir) / "meta.json").string();
  std::ifstream in(path, std::ios::binary);
  MOEKIT_CHECK(in.good(), path, ": missing or unreadable; ", dir, " is not a committed checkpoint");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    MOEKIT_FAIL(path, ": not valid JSON: ", e.what());
  }
  MOEKIT_CHECK(meta.is_object(), path, ": expected a JSON object");
  MOEKIT_CHECK(meta.contains("step") && meta["step"].is_number_integer() && meta["step"].get<int64_t>() >= 0, path,
               ": field 'step' must be a non-negative integer");
  MOEKIT_CHECK(meta.contains("files") && meta["files"].is_array() && !meta["files"].empty(), path,
               ": field 'files' must be a non-empty list of rank file names");
  std::vector<std::string> seen;
  for (const auto& f : meta["files"]) {
    MOEKIT_CHECK(f.is_string(), path, ": field 'files' holds a non-string entry ", f.dump());
    const std::string name = f.get<std::string>();
    // The list is read from disk: a name may only refer to a file inside the step directory.
    MOEKIT_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos, path,
                 ": field 'files' holds an invalid file name '", name, "'");
    MOEKIT_CHECK(std::find(seen.begin(), seen.end(), name) == seen.end(), path, ": field 'files' lists '", name,
                 "' twice");
    seen.push_back(name);
  }
  int64_t dir_step = 0;
  if (parse_step_dir_name(fs::path(dir).filename().string(), &dir_step))
    MOEKIT_CHECK(dir_step == meta["step"].get<int64_t>(), path, ": step ", meta["step"].get<int64_t>(),
                 " disagrees with the directory name");
  return meta;
}

}  // namespace

struct TrainCheckpointReader::Impl {
  std::string dir;
  std::vector<std::string> paths;  // rank files, in meta order
  std::vector<h5::Handle> files;
  std::map<std::string, std::map<std::string, Entry>> groups;

  std::string where(int file, const std::string& group, const std::string& name) const {
    return paths[file] + ": dataset /" + group + "/" + name;
  }

  const Entry& entry(const std::string& group, const std::string& name) const {
    auto g = groups.find(group);
    const Entry* e = nullptr;
    if (g != groups.end()) {
      auto it = g->second.find(name);
      if (it != g->second.end()) e = &it->second;
    }
    MOEKIT_CHECK(e != nullptr, dir, ": no dataset /", group, "/", name, " in any of its ", paths.size(), " file(s)");
    return *e;
  }

  void index_dataset(int file, const std::string& group, const std::string& name, hid_t dset);
  void index_file(int file);
  void check_disjoint();
  // Reads one piece into dst (piece.numel floats) and verifies its checksum.
  void read_piece(const std::string& group, const std::string& name, const Piece& p, float* dst) const;
};

void TrainCheckpointReader::Impl::index_dataset(int file, const std::string& group, const std::string& name,
                                                hid_t dset) {
  const std::string at = where(file, group, name);
  h5::Handle type = h5::own(H5Dget_type(dset), H5Tclose, at, "H5Dget_type");
  const bool f32 = H5Tequal(type.get(), H5T_IEEE_F32LE) > 0 || H5Tequal(type.get(), H5T_IEEE_F32BE) > 0;
  MOEKIT_CHECK(f32, at, ": dtype must be IEEE f32, found type class ", static_cast<int>(H5Tget_class(type.get())),
               " of ", H5Tget_size(type.get()), " bytes");
  h5::Handle space = h5::own(H5Dget_space(dset), H5Sclose, at, "H5Dget_space");
  const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
  MOEKIT_CHECK(cls == H5S_SCALAR || cls == H5S_SIMPLE, at, ": has no data (null dataspace)");
  Shape shape;
  if (cls == H5S_SIMPLE) {
    int ndims = H5Sget_simple_extent_ndims(space.get());
    h5::check(ndims, at, "H5Sget_simple_extent_ndims");
    MOEKIT_CHECK(ndims <= kMaxRank, at, ": rank ", ndims, " exceeds ", kMaxRank);
    hsize_t dims[kMaxRank];
    h5::check(H5Sget_simple_extent_dims(space.get(), dims, nullptr), at, "H5Sget_simple_extent_dims");
    shape.assign(dims, dims + ndims);
  }
  Piece p;
  p.file = file;
  p.numel = 1;
  for (int64_t d : shape)
    MOEKIT_CHECK(d >= 0 && !__builtin_mul_overflow(p.numel, d, &p.numel) && p.numel <= (INT64_MAX / 4), at,
                 ": shape ", shape_str(shape), " is too large");
  p.crc = h5::read_attr_u32(dset, "crc32c", at);

  const bool has_off = h5::has_attr(dset, "row_offset", at), has_full = h5::has_attr(dset, "full_rows", at);
  MOEKIT_CHECK(has_off == has_full, at, ": has one of the attributes row_offset and full_rows but not the other");
  Shape full = shape;
  p.rows = shape.empty() ? 1 : shape[0];
  if (has_off) {
    MOEKIT_CHECK(!shape.empty(), at, ": a scalar cannot be a row range");
    p.row_offset = h5::read_attr_i64(dset, "row_offset", at);
    full[0] = h5::read_attr_i64(dset, "full_rows", at);
    MOEKIT_CHECK(p.row_offset >= 0 && p.row_offset + p.rows <= full[0], at, ": rows [", p.row_offset, ", ",
                 p.row_offset + p.rows, ") outside full_rows ", full[0]);
  }
  Entry& e = groups[group][name];
  if (e.pieces.empty()) {
    e.full = full;
  } else {
    MOEKIT_CHECK(e.full == full, at, ": full shape ", shape_str(full), " disagrees with ", shape_str(e.full), " in ",
                 paths[e.pieces.front().file]);
  }
  e.pieces.push_back(p);
}

void TrainCheckpointReader::Impl::index_file(int file) {
  const std::string& path = paths[file];
  hid_t f = files[file].get();
  for (const std::string& group : link_names(f, path)) {
    const std::string gat = path + ": group /" + group;
    h5::Handle g = h5::own(H5Oopen(f, group.c_str(), H5P_DEFAULT), H5Oclose, gat, "H5Oopen");
    MOEKIT_CHECK(H5Iget_type(g.get()) == H5I_GROUP, gat, ": expected a group at the top level");
    for (const std::string& name : link_names(g.get(), gat)) {
      const std::string at = where(file, group, name);
      h5::Handle d = h5::own(H5Oopen(g.get(), name.c_str(), H5P_DEFAULT), H5Oclose, at, "H5Oopen");
      MOEKIT_CHECK(H5Iget_type(d.get()) == H5I_DATASET, at, ": expected a dataset");
      index_dataset(file, group, name, d.get());
    }
  }
}

// Every row of a tensor must be stored once: two pieces claiming the same rows would make the
// result depend on which file is read, so they are refused rather than guessed between.
void TrainCheckpointReader::Impl::check_disjoint() {
  for (auto& [group, tensors] : groups)
    for (auto& [name, e] : tensors) {
      std::sort(e.pieces.begin(), e.pieces.end(),
                [](const Piece& a, const Piece& b) { return a.row_offset < b.row_offset; });
      for (size_t i = 1; i < e.pieces.size(); ++i) {
        const Piece &a = e.pieces[i - 1], &b = e.pieces[i];
        MOEKIT_CHECK(b.row_offset >= a.row_offset + a.rows, where(b.file, group, name), ": rows [", b.row_offset, ", ",
                     b.row_offset + b.rows, ") overlap rows [", a.row_offset, ", ", a.row_offset + a.rows, ") in ",
                     paths[a.file]);
      }
    }
}

void TrainCheckpointReader::Impl::read_piece(const std::string& group, const std::string& name, const Piece& p,
                                             float* dst) const {
  const std::string at = where(p.file, group, name);
  h5::Handle g = h5::own(H5Gopen2(files[p.file].get(), group.c_str(), H5P_DEFAULT), H5Gclose, at, "H5Gopen2");
  h5::Handle d = h5::own(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose, at, "H5Dopen2");
  if (p.numel > 0) h5::check(H5Dread(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst), at, "H5Dread");
  const uint32_t crc = crc32c(dst, static_cast<size_t>(p.numel) * sizeof(float));
  if (crc != p.crc) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "stored 0x%08x, computed 0x%08x", p.crc, crc);
    MOEKIT_FAIL(at, ": crc32c mismatch (", buf, "): the checkpoint is corrupt");
  }
}

TrainCheckpointReader::TrainCheckpointReader(const std::string& step_dir) : impl_(std::make_unique<Impl>()) {
  dir_ = step_dir;
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  std::error_code ec;
  MOEKIT_CHECK(fs::is_directory(dir_, ec), dir_, ": not a checkpoint directory (does not exist)");
  meta_ = load_meta(dir_);
  impl_->dir = dir_;
  h5::quiet();
  for (const auto& f : meta_["files"]) {
    const std::string path = (fs::path(dir_) / f.get<std::string>()).string();
    MOEKIT_CHECK(fs::is_regular_file(path, ec), path, ": listed in ", dir_, "/meta.json but missing");
    h5::Handle fapl = h5::file_access_plist(path);
    impl_->paths.push_back(path);
    impl_->files.push_back(
        h5::own(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, path, "opening the HDF5 file"));
    impl_->index_file(static_cast<int>(impl_->files.size()) - 1);
  }
  impl_->check_disjoint();
}

TrainCheckpointReader::~TrainCheckpointReader() = default;

int64_t TrainCheckpointReader::step() const { return meta_["step"].get<int64_t>(); }

bool TrainCheckpointReader::has(const std::string& group, const std::string& name) const {
  auto g = impl_->groups.find(group);
  return g != impl_->groups.end() && g->second.count(name) > 0;
}

Shape TrainCheckpointReader::shape(const std::string& group, const std::string& name) const {
  return impl_->entry(group, name).full;
}

void TrainCheckpointReader::check_shape(const std::string& group, const std::string& name,
                                        const Shape& expected) const {
  const Shape& got = impl_->entry(group, name).full;
  MOEKIT_CHECK(got == expected, dir_, ": dataset /", group, "/", name, " has shape ", shape_str(got),
               ", the model expects ", shape_str(expected));
}

std::vector<std::string> TrainCheckpointReader::names(const std::string& group) const {
  std::vector<std::string> out;
  auto g = impl_->groups.find(group);
  if (g != impl_->groups.end())
    for (const auto& kv : g->second) out.push_back(kv.first);
  return out;
}

void TrainCheckpointReader::read(const std::string& group, const std::string& name, float* out, int64_t row_begin,
                                 int64_t rows) const {
  h5::quiet();
  const Entry& e = impl_->entry(group, name);
  const int64_t full_rows = e.full_rows(), row_numel = e.row_numel();
  if (rows < 0) rows = full_rows - row_begin;
  const int64_t row_end = row_begin + rows;
  MOEKIT_CHECK(row_begin >= 0 && row_begin <= full_rows && row_end <= full_rows, dir_, ": dataset /", group, "/",
               name, ": rows [", row_begin, ", ", row_end, ") requested of a tensor of ", full_rows, " rows");
  // Coverage first, so that a gap is reported before any reading.
  int64_t next = row_begin;
  for (const Piece& p : e.pieces) {
    if (p.row_offset + p.rows <= next || next >= row_end) continue;
    MOEKIT_CHECK(p.row_offset <= next, dir_, ": dataset /", group, "/", name, ": rows [", next, ", ",
                 std::min(p.row_offset, row_end), ") are in none of its files");
    next = p.row_offset + p.rows;
  }
  MOEKIT_CHECK(next >= row_end, dir_, ": dataset /", group, "/", name, ": rows [", next, ", ", row_end,
               ") are in none of its files");

  std::vector<float> tmp;
  for (const Piece& p : e.pieces) {
    const int64_t lo = std::max(p.row_offset, row_begin), hi = std::min(p.row_offset + p.rows, row_end);
    if (lo >= hi) continue;
    // The checksum covers the whole piece, so the whole piece is read even for a few rows.
    float* dst = out + (p.row_offset - row_begin) * row_numel;
    const bool direct = p.row_offset >= row_begin && p.row_offset + p.rows <= row_end;
    if (!direct) {
      tmp.resize(static_cast<size_t>(p.numel));
      dst = tmp.data();
    }
    impl_->read_piece(group, name, p, dst);
    if (!direct)
      std::memcpy(out + (lo - row_begin) * row_numel, tmp.data() + (lo - p.row_offset) * row_numel,
                  static_cast<size_t>((hi - lo) * row_numel) * sizeof(float));
  }
}

void TrainCheckpointReader::verify_all() const {
  h5::quiet();
  std::vector<float> buf;
  for (const auto& [group, tensors] : impl_->groups)
    for (const auto& [name, e] : tensors)
      for (const Piece& p : e.pieces) {
        buf.resize(static_cast<size_t>(p.numel));
        impl_->read_piece(group, name, p, buf.data());
      }
}

}  // namespace moekit::checkpoint
