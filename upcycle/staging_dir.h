// StagingDir: the output directory of an upcycle is built as a hidden sibling
// (.NAME.upcycle-tmp.<pid>) and renamed into place only when complete, so a failure — bad
// input found late, a full disk, Ctrl-C — never leaves a partial checkpoint under the name the
// user asked for. Also: refusing an existing output unless overwriting, a free-space check
// before the first byte, and an interrupt flag that SIGINT/SIGTERM set and the work loop polls.
#pragma once

#include <cstdint>
#include <string>

namespace moekit::upcycle {

class StagingDir {
 public:
  // Checks `out` (must not exist unless `overwrite`; its parent must exist), that the file
  // system has `bytes_needed` free, then creates the staging directory.
  StagingDir(const std::string& out, bool overwrite, uint64_t bytes_needed);
  ~StagingDir();  // removes the staging directory unless committed
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const std::string& path() const { return tmp_; }
  const std::string& out() const { return out_; }
  // Renames the staging directory to `out` (replacing an old one when overwriting) and syncs
  // the parent directory.
  void commit();

 private:
  std::string out_, tmp_;
  bool overwrite_ = false, committed_ = false;
};

// Installs SIGINT/SIGTERM handlers that set the interrupt flag, and ignores SIGXFSZ so that
// exceeding a file-size limit is a write error (EFBIG) with a message, not a silent kill.
// Restores the previous handlers on destruction.
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};
// Throws moekit::Error("interrupted ...") if a signal arrived.
void check_interrupted();

// Bytes free for an unprivileged writer on the file system holding `path`.
uint64_t free_bytes(const std::string& path);

// Writes a small file inside the staging directory (no temp file: the directory is the unit
// that appears atomically); errors name the path and the reason.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace moekit::upcycle
