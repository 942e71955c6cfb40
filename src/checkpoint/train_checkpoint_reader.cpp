// Reading side of the HDF5 training checkpoints. The constructor checks every file of the step
// against manifest.json before anything parses it, validates meta.json, opens every listed rank
// file and indexes its datasets into pieces (which file holds which rows of which tensor),
// refusing anything the writer does not produce (links other than hard links, objects other
// than groups of datasets, foreign attributes, non-f32, chunked, filtered or external storage, a
// storage size that disagrees with the shape). read() assembles a row range from the pieces and
// verifies each piece's crc32c before handing out a byte of it, reading in bounded blocks.
//
// The files are our own (reliability-ecosystem.md 1.1: never load a foreign HDF5 checkpoint),
// but they may be truncated, bit-rotted or edited, so nothing read from them is used unchecked.
#include "checkpoint/train_checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>

#include "checkpoint/hdf5_util.h"
#include "checkpoint/manifest.h"
#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/crc32c.h"
#include "core/finite.h"

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

// Names of the links in a group, in name order. Only hard links: a soft link would make one
// tensor appear under two names, an external link would read another file.
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
    H5L_info_t li;
    h5::check(H5Lget_info_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, &li, H5P_DEFAULT), where,
              "H5Lget_info_by_idx");
    MOEKIT_CHECK(li.type == H5L_TYPE_HARD, where, ": '", clip_for_message(name), "' is a ",
                 li.type == H5L_TYPE_SOFT ? "soft" : li.type == H5L_TYPE_EXTERNAL ? "external" : "user-defined",
                 " link; a moekit checkpoint holds hard links only");
    names.push_back(std::move(name));
  }
  return names;
}

// meta.json from its verified bytes: the fields the reader needs, and their agreement with the
// manifest (the same rank files) and the directory name (the same step).
nlohmann::json load_meta(const std::string& dir, const VerifiedStep& v) {
  const std::string path = (fs::path(dir) / "meta.json").string();
  ParseLimits limits;
  limits.max_bytes = size_t{16} << 20;
  limits.what = "meta.json";
  const nlohmann::json meta = parse_json(v.text.at("meta.json"), path, limits);
  MOEKIT_CHECK(meta.is_object(), path, ": expected a JSON object");
  MOEKIT_CHECK(meta.contains("step") && meta["step"].is_number_integer() && meta["step"].get<int64_t>() >= 0, path,
               ": field 'step' must be a non-negative integer");
  MOEKIT_CHECK(meta.contains("files") && meta["files"].is_array() && !meta["files"].empty(), path,
               ": field 'files' must be a non-empty list of rank file names");
  std::vector<std::string> seen;
  for (const auto& f : meta["files"]) {
    MOEKIT_CHECK(f.is_string(), path, ": field 'files' holds a non-string entry ", clip_for_message(f.dump()));
    const std::string name = f.get<std::string>();
    // The list is read from disk: a name may only refer to a file inside the step directory.
    MOEKIT_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos, path,
                 ": field 'files' holds an invalid file name '", clip_for_message(name), "'");
    MOEKIT_CHECK(std::find(seen.begin(), seen.end(), name) == seen.end(), path, ": field 'files' lists '", name,
                 "' twice");
    MOEKIT_CHECK(v.files.count(name), path, ": lists '", name, "', which the manifest does not");
    seen.push_back(name);
  }
  // Every file of the manifest other than the metadata is a rank file that meta.json lists.
  MOEKIT_CHECK(seen.size() + 2 == v.files.size(), path, ": lists ", seen.size(), " rank file(s), the manifest ",
               v.files.size() - 2);
  const int64_t step = meta["step"].get<int64_t>();
  MOEKIT_CHECK(step == v.step, path, ": step ", step, " disagrees with the manifest's step ", v.step);
  int64_t dir_step = 0;
  if (parse_step_dir_name(fs::path(dir).filename().string(), &dir_step))
    MOEKIT_CHECK(dir_step == step, path, ": step ", step, " disagrees with the directory name");
  if (meta.contains("world_size")) {
    const int64_t world = json_int(meta["world_size"], path, "world_size", 1, int64_t{1} << 24);
    MOEKIT_CHECK(world == static_cast<int64_t>(seen.size()), path, ": world_size ", world, " but ", seen.size(),
                 " rank file(s)");
    for (int64_t r = 0; r < world; ++r)
      MOEKIT_CHECK(std::find(seen.begin(), seen.end(), rank_file_name(static_cast<int>(r))) != seen.end(), path,
                   ": world_size ", world, " but ", rank_file_name(static_cast<int>(r)), " is not listed");
  }
  return meta;
}

// The rank of "rank_00012.h5" (12); -1 for any other name.
int64_t rank_of_file(const std::string& name) {
  if (name.size() < 9 || name.rfind("rank_", 0) != 0 || name.compare(name.size() - 3, 3, ".h5") != 0) return -1;
  const std::string digits = name.substr(5, name.size() - 8);
  if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

// Names of the attributes of an object.
std::vector<std::string> attr_names(hid_t obj, const std::string& where) {
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
    return 0;
  };
  hsize_t idx = 0;
  h5::check(H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, collect, &names), where, "H5Aiterate2");
  return names;
}

void check_attrs(hid_t obj, std::initializer_list<const char*> allowed, const std::string& where) {
  for (const std::string& a : attr_names(obj, where)) {
    bool ok = false;
    for (const char* x : allowed) ok = ok || a == x;
    MOEKIT_CHECK(ok, where, ": unexpected attribute '", clip_for_message(a), "' (not written by moekit)");
  }
}

// Where the bytes of one dataset must be: contiguous f32 without filters or external
// files, its storage exactly numel * 4 bytes inside the file. A flipped bit in a shape then
// fails here, before anything is sized from it.
void check_storage(hid_t dset, int64_t numel, uint64_t file_size, const std::string& at) {
  h5::Handle dcpl = h5::own(H5Dget_create_plist(dset), H5Pclose, at, "H5Dget_create_plist");
  MOEKIT_CHECK(H5Pget_layout(dcpl.get()) == H5D_CONTIGUOUS, at, ": storage layout is not contiguous");
  MOEKIT_CHECK(H5Pget_nfilters(dcpl.get()) == 0, at, ": has filters (moekit writes unfiltered data)");
  MOEKIT_CHECK(H5Pget_external_count(dcpl.get()) == 0, at, ": stores its data in external files");
  const uint64_t want = static_cast<uint64_t>(numel) * sizeof(float);
  const hsize_t storage = H5Dget_storage_size(dset);
  MOEKIT_CHECK(storage == want, at, ": stores ", storage, " bytes, but its shape needs ", want);
  if (numel == 0) return;
  const haddr_t off = H5Dget_offset(dset);
  MOEKIT_CHECK(off != HADDR_UNDEF && off <= file_size && want <= file_size - off, at, ": data at offset ", off,
               " (", want, " bytes) is outside the ", file_size, "-byte file");
}

}  // namespace

struct TrainCheckpointReader::Impl {
  std::string dir;
  std::vector<std::string> paths;  // rank files, in meta order
  std::vector<uint64_t> sizes;     // their sizes (from the verified manifest)
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
  void index_file(int file, int64_t step);
  void check_disjoint();
  // Streams one piece in blocks of whole rows (at most kBlockBytes, at least one row), handing
  // each to sink(first_row_in_piece, rows, data), and verifies the checksum over all of them.
  // With require_finite, a NaN or infinity is an error (after the checksum matched).
  void stream_piece(const std::string& group, const std::string& name, const Piece& p, int64_t row_numel,
                    const std::function<void(int64_t, int64_t, const float*)>& sink, bool require_finite) const;
  // Reads a whole piece into dst (p.numel floats) and verifies its checksum.
  void read_piece(const std::string& group, const std::string& name, const Piece& p, float* dst) const;
};

void TrainCheckpointReader::Impl::index_dataset(int file, const std::string& group, const std::string& name,
                                                hid_t dset) {
  const std::string at = where(file, group, name);
  check_attrs(dset, {"crc32c", "row_offset", "full_rows"}, at);
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
    for (int i = 0; i < ndims; ++i)
      MOEKIT_CHECK(dims[i] <= static_cast<hsize_t>(INT64_MAX), at, ": dimension ", i, " (", dims[i], ") is too large");
    shape.assign(dims, dims + ndims);
  }
  Piece p;
  p.file = file;
  p.numel = 1;
  for (int64_t d : shape)
    MOEKIT_CHECK(d >= 0 && !__builtin_mul_overflow(p.numel, d, &p.numel) && p.numel <= (INT64_MAX / 4), at,
                 ": shape ", shape_str(shape), " is too large");
  check_storage(dset, p.numel, sizes[file], at);
  p.crc = h5::read_attr_u32(dset, "crc32c", at);

  const bool has_off = h5::has_attr(dset, "row_offset", at), has_full = h5::has_attr(dset, "full_rows", at);
  MOEKIT_CHECK(has_off == has_full, at, ": has one of the attributes row_offset and full_rows but not the other");
  Shape full = shape;
  p.rows = shape.empty() ? 1 : shape[0];
  if (has_off) {
    MOEKIT_CHECK(!shape.empty(), at, ": a scalar cannot be a row range");
    p.row_offset = h5::read_attr_i64(dset, "row_offset", at);
    full[0] = h5::read_attr_i64(dset, "full_rows", at);
    MOEKIT_CHECK(p.row_offset >= 0 && full[0] >= 0 && p.row_offset <= full[0] && p.rows <= full[0] - p.row_offset, at,
                 ": rows [", p.row_offset, ", ", p.row_offset, " + ", p.rows, ") outside full_rows ", full[0]);
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

void TrainCheckpointReader::Impl::index_file(int file, int64_t step) {
  const std::string& path = paths[file];
  hid_t f = files[file].get();
  // The step and rank the writer stamped: a rank file copied from another step or rank is refused
  // even if someone re-made the manifest around it.
  check_attrs(f, {"step", "rank"}, path);
  for (const char* attr : {"step", "rank"})
    MOEKIT_CHECK(h5::has_attr(f, attr, path), path, ": has no '", attr, "' attribute (not a moekit rank file)");
  const int64_t file_step = h5::read_attr_i64(f, "step", path), file_rank = h5::read_attr_i64(f, "rank", path);
  MOEKIT_CHECK(file_step == step, path, ": was written for step ", file_step, ", not ", step,
               " (copied from another checkpoint?)");
  MOEKIT_CHECK(file_rank == rank_of_file(fs::path(path).filename().string()), path, ": was written by rank ",
               file_rank, " (copied from another rank's file?)");
  for (const std::string& group : link_names(f, path)) {
    const std::string gat = path + ": group /" + group;
    h5::Handle g = h5::own(H5Oopen(f, group.c_str(), H5P_DEFAULT), H5Oclose, gat, "H5Oopen");
    MOEKIT_CHECK(H5Iget_type(g.get()) == H5I_GROUP, gat, ": expected a group at the top level");
    check_attrs(g.get(), {}, gat);
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

namespace {

constexpr int64_t kBlockBytes = int64_t{4} << 20;

void check_crc(uint32_t stored, uint32_t computed, const std::string& at) {
  if (stored == computed) return;
  char buf[96];
  std::snprintf(buf, sizeof buf, "stored 0x%08x, computed 0x%08x", stored, computed);
  MOEKIT_FAIL(at, ": crc32c mismatch (", buf, "): the checkpoint is corrupt");
}

}  // namespace

void TrainCheckpointReader::Impl::stream_piece(const std::string& group, const std::string& name, const Piece& p,
                                               int64_t row_numel,
                                               const std::function<void(int64_t, int64_t, const float*)>& sink,
                                               bool require_finite) const {
  const std::string at = where(p.file, group, name);
  h5::Handle g = h5::own(H5Gopen2(files[p.file].get(), group.c_str(), H5P_DEFAULT), H5Gclose, at, "H5Gopen2");
  h5::Handle d = h5::own(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose, at, "H5Dopen2");
  h5::Handle fspace = h5::own(H5Dget_space(d.get()), H5Sclose, at, "H5Dget_space");
  const int ndims = H5Sget_simple_extent_ndims(fspace.get());
  h5::check(ndims, at, "H5Sget_simple_extent_ndims");
  // Rows per block: the storage check bounded numel by the file size, so one row always fits.
  const int64_t block_rows = ndims == 0 ? 1 : std::max<int64_t>(1, kBlockBytes / 4 / std::max<int64_t>(1, row_numel));
  std::vector<float> buf(static_cast<size_t>(std::min(p.numel, block_rows * row_numel)));
  uint32_t crc = 0;
  int64_t bad = -1;
  for (int64_t r0 = 0; r0 < p.rows && p.numel > 0; r0 += block_rows) {
    const int64_t nr = std::min(block_rows, p.rows - r0), n = nr * row_numel;
    if (ndims == 0) {
      h5::check(H5Dread(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), at, "H5Dread");
    } else {
      std::vector<hsize_t> start(static_cast<size_t>(ndims), 0), count(static_cast<size_t>(ndims));
      h5::check(H5Sget_simple_extent_dims(fspace.get(), count.data(), nullptr), at, "H5Sget_simple_extent_dims");
      start[0] = static_cast<hsize_t>(r0);
      count[0] = static_cast<hsize_t>(nr);
      h5::check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), at,
                "H5Sselect_hyperslab");
      const hsize_t mdim = static_cast<hsize_t>(n);
      h5::Handle mspace = h5::own(H5Screate_simple(1, &mdim, nullptr), H5Sclose, at, "H5Screate_simple");
      h5::check(H5Dread(d.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT, buf.data()), at,
                "H5Dread");
    }
    crc = crc32c(buf.data(), static_cast<size_t>(n) * sizeof(float), crc);
    if (require_finite && bad < 0) {
      const int64_t i = first_non_finite(buf.data(), n);
      if (i >= 0) bad = r0 * row_numel + i;
    }
    if (sink) sink(r0, nr, buf.data());
  }
  check_crc(p.crc, crc, at);
  MOEKIT_CHECK(bad < 0, at, ": element ", bad, " is not finite (NaN or infinity): the state was already broken "
               "when this checkpoint was written");
}

void TrainCheckpointReader::Impl::read_piece(const std::string& group, const std::string& name, const Piece& p,
                                             float* dst) const {
  const std::string at = where(p.file, group, name);
  h5::Handle g = h5::own(H5Gopen2(files[p.file].get(), group.c_str(), H5P_DEFAULT), H5Gclose, at, "H5Gopen2");
  h5::Handle d = h5::own(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose, at, "H5Dopen2");
  if (p.numel > 0) h5::check(H5Dread(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst), at, "H5Dread");
  check_crc(p.crc, crc32c(dst, static_cast<size_t>(p.numel) * sizeof(float)), at);
}

TrainCheckpointReader::TrainCheckpointReader(const std::string& step_dir) : impl_(std::make_unique<Impl>()) {
  dir_ = step_dir;
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  std::error_code ec;
  MOEKIT_CHECK(fs::is_directory(dir_, ec), dir_, ": not a checkpoint directory (does not exist)");
  // Every byte of every file against the manifest first: HDF5 never parses a file that is not
  // exactly what the commit wrote.
  const VerifiedStep verified = verify_step_dir(dir_);
  meta_ = load_meta(dir_, verified);
  impl_->dir = dir_;
  h5::quiet();
  for (const auto& f : meta_["files"]) {
    const std::string name = f.get<std::string>(), path = (fs::path(dir_) / name).string();
    MOEKIT_CHECK(rank_of_file(name) >= 0, path, ": listed in ", dir_, "/meta.json but not named rank_<R>.h5");
    h5::Handle fapl = h5::file_access_plist(path);
    impl_->paths.push_back(path);
    impl_->sizes.push_back(verified.files.at(name).bytes);
    impl_->files.push_back(
        h5::own(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, path, "opening the HDF5 file"));
    impl_->index_file(static_cast<int>(impl_->files.size()) - 1, verified.step);
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

std::vector<std::string> TrainCheckpointReader::groups() const {
  std::vector<std::string> out;
  for (const auto& kv : impl_->groups) out.push_back(kv.first);
  return out;
}

void TrainCheckpointReader::read(const std::string& group, const std::string& name, float* out, int64_t row_begin,
                                 int64_t rows) const {
  h5::quiet();
  const Entry& e = impl_->entry(group, name);
  const int64_t full_rows = e.full_rows(), row_numel = e.row_numel();
  if (rows < 0) rows = full_rows - row_begin;
  int64_t row_end = 0;
  MOEKIT_CHECK(row_begin >= 0 && row_begin <= full_rows && rows >= 0 &&
                   !__builtin_add_overflow(row_begin, rows, &row_end) && row_end <= full_rows,
               dir_, ": dataset /", group, "/", name, ": rows [", row_begin, ", ", row_begin, " + ", rows,
               ") requested of a tensor of ", full_rows, " rows");
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

  for (const Piece& p : e.pieces) {
    const int64_t lo = std::max(p.row_offset, row_begin), hi = std::min(p.row_offset + p.rows, row_end);
    if (lo >= hi) continue;
    if (p.row_offset >= row_begin && p.row_offset + p.rows <= row_end) {  // the whole piece lands in out
      impl_->read_piece(group, name, p, out + (p.row_offset - row_begin) * row_numel);
      continue;
    }
    // The checksum covers the whole piece: stream all of it, keep the rows asked for.
    impl_->stream_piece(
        group, name, p, row_numel,
        [&](int64_t r0, int64_t nr, const float* data) {
          const int64_t a = std::max(p.row_offset + r0, lo), b = std::min(p.row_offset + r0 + nr, hi);
          if (a < b)
            std::memcpy(out + (a - row_begin) * row_numel, data + (a - p.row_offset - r0) * row_numel,
                        static_cast<size_t>((b - a) * row_numel) * sizeof(float));
        },
        /*require_finite=*/false);
  }
}

void TrainCheckpointReader::verify_all(bool require_finite) const {
  h5::quiet();
  for (const auto& [group, tensors] : impl_->groups)
    for (const auto& [name, e] : tensors)
      for (const Piece& p : e.pieces) impl_->stream_piece(group, name, p, e.row_numel(), {}, require_finite);
}

}  // namespace moekit::checkpoint
