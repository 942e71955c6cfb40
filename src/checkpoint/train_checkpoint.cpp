// Writing side of the HDF5 training checkpoints and the directory protocol around them: the
// per-rank writer, the atomic commit (fsync, rename, `latest`, pruning, stale .tmp cleanup),
// listing and resume resolution. The reader is in train_checkpoint_reader.cpp.
//
// Durability rule followed throughout (reliability-ecosystem.md 1.2.7): data is fsynced before
// the rename that publishes it, and the directory holding a renamed entry is fsynced after it,
// so after a crash a name either does not exist or refers to complete, durable contents.
#include "checkpoint/train_checkpoint.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <utility>

#include "checkpoint/hdf5_util.h"
#include "checkpoint/manifest.h"
#include "core/crc32c.h"
#include "core/fault.h"
#include "core/log.h"

namespace moekit::checkpoint {

namespace fs = std::filesystem;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "checksums are over little-endian f32 bytes; a big-endian host needs byte swaps here");

namespace {

constexpr const char* kPartialSuffix = ".partial";

std::string errno_str() { return std::strerror(errno); }

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A file or directory's data and metadata to disk. Some file systems refuse to fsync a
// directory (EINVAL); there is nothing more that can be done there.
void fsync_path(const std::string& path, bool is_dir) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (is_dir ? O_DIRECTORY : 0));
  MOEKIT_CHECK(fd >= 0, path, ": cannot open for fsync: ", errno_str());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  MOEKIT_CHECK(rc == 0 || (is_dir && err == EINVAL), path, ": fsync failed: ", std::strerror(err));
}

void rename_or_fail(const std::string& from, const std::string& to) {
  MOEKIT_CHECK(::rename(from.c_str(), to.c_str()) == 0, to, ": cannot rename ", from, " to it: ", errno_str());
}

// Replaces `path` by temp + fsync + rename: a crash leaves the old or the new contents, never
// an empty or half-written pointer (the failure Megatron's tracker file can show), and a
// failure removes the temp file.
void replace_file(const std::string& dir, const std::string& name, const std::string& text, const char* fault) {
  const std::string path = (fs::path(dir) / name).string();
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  write_synced(tmp, text, fault);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    MOEKIT_FAIL(path, ": cannot rename ", tmp, " to it: ", std::strerror(err));
  }
  fsync_path(dir, true);
}

// Moves the complete `tmp` directory to `fin`. When `fin` exists (the step is committed again
// after a resume from an earlier checkpoint), the two are swapped with renameat2's
// RENAME_EXCHANGE so that `fin` names a complete checkpoint at every instant; the old contents
// end up under `tmp` and are deleted. File systems without the flag get two renames, with a
// window in which `fin` is absent (resume then falls back to the previous checkpoint). The
// parent is fsynced before the old contents are deleted, so that a crash cannot persist the
// deletion without the swap.
void install_dir(const std::string& tmp, const std::string& fin, const std::string& parent) {
  std::error_code ec;
  if (!fs::exists(fin, ec)) {
    rename_or_fail(tmp, fin);
    fsync_path(parent, true);
    return;
  }
#ifdef SYS_renameat2
  constexpr unsigned kRenameExchange = 1u << 1;  // RENAME_EXCHANGE from <linux/fs.h>
  if (::syscall(SYS_renameat2, AT_FDCWD, tmp.c_str(), AT_FDCWD, fin.c_str(), kRenameExchange) == 0) {
    fsync_path(parent, true);
    fs::remove_all(tmp, ec);  // a failure here leaves a stale .tmp that the cleanup retries
    return;
  }
  MOEKIT_CHECK(errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP, fin, ": cannot swap in ", tmp, ": ",
               errno_str());
#endif
  const std::string old = fin + ".old.tmp";
  fs::remove_all(old, ec);
  rename_or_fail(fin, old);
  rename_or_fail(tmp, fin);
  fsync_path(parent, true);
  fs::remove_all(old, ec);
}

// Step directories of ckpt_dir with their steps, oldest first.
std::vector<std::pair<int64_t, std::string>> committed_steps(const std::string& ckpt_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(ckpt_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(ckpt_dir, ec)) {
    int64_t step = 0;
    std::error_code dir_ec;  // an entry that cannot be stat'ed is not a checkpoint
    if (parse_step_dir_name(e.path().filename().string(), &step) && e.is_directory(dir_ec))
      out.emplace_back(step, e.path().string());
  }
  MOEKIT_CHECK(!ec, ckpt_dir, ": cannot list checkpoint directory: ", ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

// Removes what crashed commits leave behind: step_*.tmp directories (a writer that never
// committed, or the old half of a swap) and temp files of the `latest` pointer.
void remove_stale(const std::string& ckpt_dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(ckpt_dir, ec)) {
    const std::string name = e.path().filename().string();
    const bool stale_dir = name.rfind("step_", 0) == 0 && ends_with(name, ".tmp");
    const bool stale_latest = name.rfind("latest.tmp.", 0) == 0;
    if (!stale_dir && !stale_latest) continue;
    std::error_code rm;
    fs::remove_all(e.path(), rm);
    if (rm) log_warn(e.path().string(), ": cannot remove stale checkpoint temp: ", rm.message());
    else log_debug("removed stale checkpoint temp ", e.path().string());
  }
}

// Keeps `step` and the newest keep-1 older checkpoints. Later steps are not this run's line
// (it resumed from an earlier checkpoint); deleting them is the user's decision.
void prune(const std::string& ckpt_dir, int64_t step, int keep) {
  if (keep <= 0) return;
  std::vector<std::string> older, later;
  for (const auto& [s, path] : committed_steps(ckpt_dir)) {
    if (s < step) older.push_back(path);
    if (s > step) later.push_back(path);
  }
  for (const auto& path : later)
    log_warn(path, ": checkpoint of a later step than the one just committed (", step,
             ") is kept but is not on this run's line; `latest` does not point to it");
  const size_t keep_older = static_cast<size_t>(keep - 1);
  for (size_t i = 0; i + keep_older < older.size(); ++i) {
    std::error_code ec;
    fs::remove_all(older[i], ec);
    if (ec) log_warn(older[i], ": cannot remove old checkpoint (keep = ", keep, "): ", ec.message());
  }
}

// Valid group and dataset names: a '/' would be read by HDF5 as a path into subgroups, and
// "." / ".." name the group itself or its parent.
void check_h5_name(const std::string& name, const char* what, const std::string& where) {
  MOEKIT_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos, where,
               ": invalid ", what, " name '", name, "' (must be non-empty, not '.' or '..', without '/')");
}

}  // namespace

std::string step_dir_name(int64_t step) {
  MOEKIT_CHECK(step >= 0, "checkpoint step must be >= 0, got ", step);
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string rank_file_name(int rank) {
  MOEKIT_CHECK(rank >= 0, "checkpoint rank must be >= 0, got ", rank);
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank_%05d.h5", rank);
  return buf;
}

bool parse_step_dir_name(const std::string& name, int64_t* step) {
  if (name.rfind("step_", 0) != 0) return false;
  const std::string digits = name.substr(5);
  if (!all_digits(digits) || digits.size() > 18) return false;  // 18 digits cannot overflow int64
  *step = std::stoll(digits);
  return true;
}

// ---- writer --------------------------------------------------------------------------------

struct TrainCheckpointWriter::Impl {
  std::string partial_path, final_path;
  h5::Handle file;
  std::vector<std::pair<std::string, h5::Handle>> groups;  // open groups, few
  bool closed = false;

  ~Impl() { discard(); }

  // Abandons an unclosed file (an error on the way): its blocks are released first, so that on
  // a full disk the space is given back and HDF5's final metadata flush has room to succeed
  // (a close that fails leaves HDF5 1.10 a half-freed file object: see h5::quiet). The .partial
  // name stays for the commit protocol; its contents are garbage either way.
  void discard() {
    groups.clear();
    if (!file.valid()) return;
    void* handle = nullptr;
    if (H5Fget_vfd_handle(file.get(), H5P_DEFAULT, &handle) >= 0 && handle != nullptr)
      (void)!::ftruncate(*static_cast<int*>(handle), 0);
    file.reset();
  }

  hid_t group(const std::string& name) {
    for (const auto& g : groups)
      if (g.first == name) return g.second.get();
    const std::string where = partial_path + ": group /" + name;
    htri_t exists = H5Lexists(file.get(), name.c_str(), H5P_DEFAULT);
    h5::check(exists, where, "H5Lexists");
    hid_t id = exists > 0 ? H5Gopen2(file.get(), name.c_str(), H5P_DEFAULT)
                          : H5Gcreate2(file.get(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    groups.emplace_back(name, h5::own(id, H5Gclose, where, exists > 0 ? "H5Gopen2" : "H5Gcreate2"));
    return groups.back().second.get();
  }
};

TrainCheckpointWriter::TrainCheckpointWriter(const std::string& ckpt_dir, int64_t step, int rank,
                                             bool create_dir)
    : impl_(std::make_unique<Impl>()) {
  const fs::path base(ckpt_dir);
  tmp_dir_ = (base / (step_dir_name(step) + ".tmp")).string();
  final_dir_ = (base / step_dir_name(step)).string();
  std::error_code ec;
  if (create_dir) {
    fs::create_directories(base, ec);
    MOEKIT_CHECK(!ec, ckpt_dir, ": cannot create checkpoint directory: ", ec.message());
    // A .tmp of this very step is from an attempt that crashed before committing.
    if (fs::exists(tmp_dir_, ec)) {
      log_warn(tmp_dir_, ": removing the unfinished checkpoint of an earlier attempt");
      fs::remove_all(tmp_dir_, ec);
      MOEKIT_CHECK(!ec, tmp_dir_, ": cannot remove stale directory: ", ec.message());
    }
    fs::create_directory(tmp_dir_, ec);
    MOEKIT_CHECK(!ec, tmp_dir_, ": cannot create: ", ec.message());
    owns_dir_ = true;
  } else {
    MOEKIT_CHECK(fs::is_directory(tmp_dir_, ec), tmp_dir_, ": does not exist; rank ", rank,
                 " must open its writer after rank 0 created it (barrier)");
  }
  impl_->final_path = (fs::path(tmp_dir_) / rank_file_name(rank)).string();
  impl_->partial_path = impl_->final_path + kPartialSuffix;
  h5::quiet();
  h5::Handle fapl = h5::file_access_plist(impl_->partial_path);
  impl_->file = h5::own(H5Fcreate(impl_->partial_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose,
                        impl_->partial_path, "H5Fcreate");
  // Which step and rank this file belongs to: the reader refuses a file copied from elsewhere.
  h5::write_attr_i64(impl_->file.get(), "step", step, impl_->partial_path);
  h5::write_attr_i64(impl_->file.get(), "rank", rank, impl_->partial_path);
}

TrainCheckpointWriter::~TrainCheckpointWriter() {
  const bool failed = !impl_->closed && std::uncaught_exceptions() > 0;
  impl_.reset();  // discards an unclosed file; no rename
  if (failed && owns_dir_) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);
  }
}

void TrainCheckpointWriter::write(const std::string& group, const std::string& name, const Shape& shape,
                                  const float* data, int64_t row_offset, int64_t full_rows) {
  const std::string where = impl_->partial_path + ": dataset /" + group + "/" + name;
  MOEKIT_CHECK(!impl_->closed, where, ": write after close()");
  check_h5_name(group, "group", where);
  check_h5_name(name, "dataset", where);
  int64_t numel = 1;
  for (int64_t d : shape)
    MOEKIT_CHECK(d >= 0 && !__builtin_mul_overflow(numel, d, &numel), where, ": invalid shape ", shape_str(shape));
  MOEKIT_CHECK(data != nullptr || numel == 0, where, ": null data for ", numel, " elements");
  bool partial = false;
  if (full_rows < 0) {
    MOEKIT_CHECK(full_rows == -1 && row_offset == 0, where, ": row_offset ", row_offset, " needs full_rows >= 0 (got ",
                 full_rows, ")");
  } else {
    MOEKIT_CHECK(!shape.empty() && row_offset >= 0 && row_offset + shape[0] <= full_rows, where, ": rows [", row_offset,
                 ", ", row_offset + (shape.empty() ? 0 : shape[0]), ") of shape ", shape_str(shape),
                 " do not fit in a tensor of ", full_rows, " rows");
    partial = row_offset > 0 || shape[0] < full_rows;
  }
  h5::quiet();
  hid_t g = impl_->group(group);
  htri_t exists = H5Lexists(g, name.c_str(), H5P_DEFAULT);
  h5::check(exists, where, "H5Lexists");
  MOEKIT_CHECK(exists == 0, where, ": written twice into the same checkpoint file");

  std::vector<hsize_t> dims(shape.begin(), shape.end());
  h5::Handle space = h5::own(shape.empty() ? H5Screate(H5S_SCALAR)
                                           : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                             H5Sclose, where, "H5Screate");
  // Contiguous layout, no filters: the bytes on disk are the f32 array itself, which keeps
  // reads a single pread and lets the corruption tests find them with H5Dget_offset.
  h5::Handle dset = h5::own(H5Dcreate2(g, name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                                       H5P_DEFAULT),
                            H5Dclose, where, "H5Dcreate2");
  if (numel > 0)
    h5::check(H5Dwrite(dset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), where, "H5Dwrite");
  const uint32_t crc = crc32c(data, static_cast<size_t>(numel) * sizeof(float));
  h5::write_attr_u32(dset.get(), "crc32c", crc, where);
  if (partial) {
    h5::write_attr_i64(dset.get(), "row_offset", row_offset, where);
    h5::write_attr_i64(dset.get(), "full_rows", full_rows, where);
  }
}

void TrainCheckpointWriter::close() {
  if (impl_->closed) return;
  h5::quiet();
  impl_->groups.clear();
  // The metadata still buffered (superblock, object headers) goes out in the flush, which may
  // fail (disk full) and is checked; an H5Fclose with nothing left to write then cannot.
  const herr_t flushed = H5Fflush(impl_->file.get(), H5F_SCOPE_LOCAL);
  if (flushed < 0) {
    const std::string why = h5::error_stack();
    impl_->discard();
    MOEKIT_FAIL(impl_->partial_path, ": H5Fflush failed (HDF5: ", why, ")");
  }
  h5::check(impl_->file.close(), impl_->partial_path, "H5Fclose");
  fsync_path(impl_->partial_path, false);
  fault_point("ckpt.rank_file");
  // The file's digest for the step's manifest, read back once (from the page cache).
  write_sum_file(impl_->final_path, digest_file(impl_->partial_path));
  rename_or_fail(impl_->partial_path, impl_->final_path);
  fsync_path(tmp_dir_, true);
  impl_->closed = true;
}

// ---- commit ----------------------------------------------------------------------------------

std::string commit_checkpoint(const std::string& ckpt_dir, int64_t step, const nlohmann::json& meta,
                              const std::string& config_yaml, int keep) {
  const std::string name = step_dir_name(step);
  const std::string tmp = (fs::path(ckpt_dir) / (name + ".tmp")).string();
  const std::string fin = (fs::path(ckpt_dir) / name).string();
  std::error_code ec;
  MOEKIT_CHECK(fs::is_directory(tmp, ec), tmp, ": does not exist; open the TrainCheckpointWriters of step ", step,
               " and close them before committing");
  MOEKIT_CHECK(meta.is_object() || meta.is_null(), tmp, ": meta must be a JSON object, got ", meta.type_name());

  try {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(tmp, ec)) {
      const std::string f = e.path().filename().string();
      MOEKIT_CHECK(!ends_with(f, kPartialSuffix), e.path().string(),
                   ": a rank never closed its checkpoint writer; refusing to commit step ", step);
      if (f.rfind("rank_", 0) == 0 && ends_with(f, ".h5") && all_digits(f.substr(5, f.size() - 8))) files.push_back(f);
    }
    MOEKIT_CHECK(!ec, tmp, ": cannot list: ", ec.message());
    MOEKIT_CHECK(!files.empty(), tmp, ": no rank_*.h5 file: nothing to commit");
    std::sort(files.begin(), files.end());
    if (meta.is_object() && meta.contains("world_size")) {
      const auto& w = meta["world_size"];
      MOEKIT_CHECK(w.is_number_integer() && w.get<int64_t>() == static_cast<int64_t>(files.size()), tmp,
                   ": meta world_size ", w.dump(), " but ", files.size(), " rank file(s) were written");
      for (size_t r = 0; r < files.size(); ++r)
        MOEKIT_CHECK(files[r] == rank_file_name(static_cast<int>(r)), tmp, ": ",
                     rank_file_name(static_cast<int>(r)), " is missing");
    }
    if (meta.is_object() && meta.contains("step"))
      MOEKIT_CHECK(meta["step"].is_number_integer() && meta["step"].get<int64_t>() == step, tmp, ": meta step ",
                   meta["step"].dump(), " but committing step ", step);

    // Every file's digest: the rank files' from the sums their writers left, after checking that
    // each file still has the size its writer saw.
    std::map<std::string, FileDigest> digests;
    for (const std::string& f : files) {
      const std::string path = (fs::path(tmp) / f).string();
      const FileDigest d = read_sum_file(path);
      MOEKIT_CHECK(fs::file_size(path) == d.bytes, path, ": is ", fs::file_size(path), " bytes but its writer saw ",
                   d.bytes);
      digests[f] = d;
      fs::remove(path + kSumSuffix);
    }
    nlohmann::json m = meta.is_null() ? nlohmann::json::object() : meta;
    m["step"] = step;
    m["files"] = files;
    const std::string meta_text = m.dump(2) + "\n";
    write_synced((fs::path(tmp) / "meta.json").string(), meta_text, "ckpt.meta");
    write_synced((fs::path(tmp) / "config.resolved.yaml").string(), config_yaml);
    digests["meta.json"] = digest_bytes(meta_text);
    digests["config.resolved.yaml"] = digest_bytes(config_yaml);
    write_synced((fs::path(tmp) / kManifestName).string(), manifest_json(step, digests));
    fsync_path(tmp, true);
  } catch (...) {
    // Nothing of this step was published: free its space (a full disk is a likely cause).
    fs::remove_all(tmp, ec);
    throw;
  }

  // The commit point: from here on step_N is a complete checkpoint.
  fault_point("ckpt.install");
  install_dir(tmp, fin, ckpt_dir);
  replace_file(ckpt_dir, "latest", name + "\n", "ckpt.latest");
  fault_point("ckpt.prune");
  // Only now that `latest` has moved may older checkpoints go (KempnerForge #102: pruning
  // before the new one was durable left nothing to resume from).
  remove_stale(ckpt_dir);
  prune(ckpt_dir, step, keep);
  return fin;
}

// ---- listing and resume ----------------------------------------------------------------------

std::vector<std::string> list_checkpoints(const std::string& ckpt_dir) {
  std::vector<std::string> out;
  for (auto& [step, path] : committed_steps(ckpt_dir)) out.push_back(std::move(path));
  return out;
}

namespace {

// The step named by CKPT_DIR/latest if it is a committed directory; -1 (with a warning when
// the pointer is present but useless) otherwise.
int64_t latest_step(const std::string& ckpt_dir, const std::vector<std::pair<int64_t, std::string>>& committed) {
  const std::string path = (fs::path(ckpt_dir) / "latest").string();
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    log_warn(path, ": missing; scanning the step directories instead");
    return -1;
  }
  char buf[64] = {};
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  std::string name(buf, n);
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
  int64_t step = -1;
  if (!parse_step_dir_name(name, &step)) {
    log_warn(path, ": does not hold a step directory name ('", name, "'); scanning the step directories instead");
    return -1;
  }
  for (const auto& c : committed)
    if (c.first == step) return step;
  log_warn(path, ": names ", name, ", which does not exist; scanning the step directories instead");
  return -1;
}

// The reader checks the manifest (every byte of every file) and the structure; `check` (the
// trainer's: names, shapes, finite values, meta fields) or else verify_all() then reads the data.
void open_and_verify(const std::string& dir, const CheckpointCheck& check) {
  TrainCheckpointReader reader(dir);
  if (check) check(reader);
  else reader.verify_all();
}

}  // namespace

std::string resolve_resume(const std::string& ckpt_dir, const std::string& resume, const CheckpointCheck& check) {
  if (resume.empty() || resume == "none") return "";  // RunConfig's default
  if (resume != "auto") {
    std::error_code ec;
    std::string dir = resume;
    if (!fs::exists(dir, ec) && !ckpt_dir.empty() && fs::is_directory(fs::path(ckpt_dir) / resume, ec))
      dir = (fs::path(ckpt_dir) / resume).string();
    MOEKIT_CHECK(fs::is_directory(dir, ec), "resume: '", resume, "' is neither 'auto' nor a checkpoint directory");
    open_and_verify(dir, check);  // its errors name the directory, file and dataset
    return dir;
  }
  const auto committed = committed_steps(ckpt_dir);
  if (committed.empty()) return "";

  // `latest` first, then older ones newest first. Directories of later steps than `latest`
  // are an abandoned branch of the run and are not candidates.
  const int64_t latest = latest_step(ckpt_dir, committed);
  std::vector<std::string> candidates;
  for (auto it = committed.rbegin(); it != committed.rend(); ++it)
    if (latest < 0 || it->first <= latest) candidates.push_back(it->second);

  std::string failures;
  for (size_t i = 0; i < candidates.size(); ++i) {
    try {
      open_and_verify(candidates[i], check);
      if (i > 0) log_warn("resuming from ", candidates[i], " (newer checkpoints failed, see above)");
      return candidates[i];
    } catch (const std::exception& e) {
      log_warn("checkpoint ", candidates[i], " is unusable, falling back to an older one: ", e.what());
      failures += "\n  " + std::string(e.what());
    }
  }
  MOEKIT_FAIL(ckpt_dir, ": resume auto: no checkpoint verifies; refusing to start from scratch over them "
              "(move them away, or set resume: none to start afresh):",
              failures);
}

}  // namespace moekit::checkpoint
