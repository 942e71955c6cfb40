// StagingDir, the interrupt guard and small file helpers for the upcycle output.
#include "upcycle/staging_dir.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "core/check.h"
#include "core/log.h"

namespace moekit::upcycle {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) { g_signal.store(sig); }

struct sigaction g_old_int, g_old_term, g_old_xfsz;

double gb(uint64_t b) { return static_cast<double>(b) / 1e9; }

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the data files were fsynced by the writer
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

uint64_t free_bytes(const std::string& path) {
  struct statvfs st;
  MOEKIT_CHECK(::statvfs(path.c_str(), &st) == 0, path, ": cannot query free space: ", std::strerror(errno));
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

StagingDir::StagingDir(const std::string& out, bool overwrite, uint64_t bytes_needed)
    : out_(out), overwrite_(overwrite) {
  MOEKIT_CHECK(!out.empty(), "--out: empty output directory name");
  fs::path p = fs::path(out).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
  out_ = p.string();
  std::error_code ec;
  const fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
  MOEKIT_CHECK(fs::is_directory(parent, ec), "--out ", out, ": parent directory '", parent.string(),
               "' does not exist");
  if (fs::exists(fs::symlink_status(p, ec))) {
    MOEKIT_CHECK(overwrite, "output directory '", out, "' already exists (pass --overwrite to replace it)");
    MOEKIT_CHECK(fs::is_directory(fs::symlink_status(p, ec)), "output '", out,
                 "' exists and is not a directory; refusing to replace it");
  }
  const uint64_t avail = free_bytes(parent.string());
  MOEKIT_CHECK(avail >= bytes_needed, "not enough disk space for '", out, "': the upcycled checkpoint needs ",
               gb(bytes_needed), " GB, ", gb(avail), " GB are free on the file system of '", parent.string(), "'");
  tmp_ = (parent / ("." + p.filename().string() + ".upcycle-tmp." + std::to_string(::getpid()))).string();
  fs::remove_all(tmp_, ec);
  fs::create_directory(tmp_, ec);
  MOEKIT_CHECK(!ec, tmp_, ": cannot create the staging directory: ", ec.message());
}

StagingDir::~StagingDir() {
  if (committed_ || tmp_.empty()) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
  if (ec) log_warn("could not remove the staging directory ", tmp_, ": ", ec.message());
}

void StagingDir::commit() {
  MOEKIT_CHECK(!committed_, tmp_, ": commit() called twice");
  check_interrupted();
  fsync_path(tmp_);
  std::error_code ec;
  std::string old;
  if (fs::exists(fs::symlink_status(out_, ec))) {
    MOEKIT_CHECK(overwrite_, "output directory '", out_, "' appeared while upcycling; not replacing it");
    old = tmp_ + ".old";
    fs::rename(out_, old, ec);
    MOEKIT_CHECK(!ec, out_, ": cannot move the old output aside: ", ec.message());
  }
  fs::rename(tmp_, out_, ec);
  if (ec) {
    std::error_code ec2;
    if (!old.empty()) fs::rename(old, out_, ec2);  // put the old output back
    MOEKIT_FAIL(out_, ": cannot rename the finished output into place: ", ec.message());
  }
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
  fsync_path(fs::path(out_).has_parent_path() ? fs::path(out_).parent_path().string() : ".");
}

InterruptGuard::InterruptGuard() {
  g_signal.store(0);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, &g_old_int);
  ::sigaction(SIGTERM, &sa, &g_old_term);
  struct sigaction ign;
  std::memset(&ign, 0, sizeof(ign));
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  ::sigaction(SIGXFSZ, &ign, &g_old_xfsz);
}

InterruptGuard::~InterruptGuard() {
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  ::sigaction(SIGXFSZ, &g_old_xfsz, nullptr);
}

void check_interrupted() {
  const int sig = g_signal.load();
  MOEKIT_CHECK(sig == 0, "interrupted by signal ", sig, " (", strsignal(sig), "); the partial output was removed");
}

void write_text_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOEKIT_CHECK(fd >= 0, path, ": cannot create: ", std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int e = errno;
      ::close(fd);
      MOEKIT_FAIL(path, ": write failed: ", std::strerror(e));
    }
    done += static_cast<size_t>(w);
  }
  MOEKIT_CHECK(::fsync(fd) == 0 && ::close(fd) == 0, path, ": fsync/close failed: ", std::strerror(errno));
}

}  // namespace moekit::upcycle
