// Checkpoint manifests (see manifest.h): file digests, the rank files' .sum sidecars, and the
// check of a step directory against its manifest.
#include "checkpoint/manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/crc32c.h"
#include "core/fault.h"

namespace moekit::checkpoint {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "moekit-train-checkpoint";
constexpr size_t kMaxTextBytes = size_t{16} << 20;  // meta.json, config.resolved.yaml, the manifest

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// "0x1234abcd" -> value; anything else is an error naming `where`.
uint32_t parse_hex32(const json& v, const std::string& where) {
  MOEKIT_CHECK(v.is_string(), where, ": crc32c must be a string like \"0x1234abcd\", got ", clip_for_message(v.dump()));
  const std::string s = v.get<std::string>();
  MOEKIT_CHECK(s.size() == 10 && s[0] == '0' && s[1] == 'x' &&
                   s.find_first_not_of("0123456789abcdef", 2) == std::string::npos,
               where, ": crc32c '", clip_for_message(s), "' is not 8 lowercase hex digits after 0x");
  return static_cast<uint32_t>(std::stoul(s.substr(2), nullptr, 16));
}

FileDigest digest_of(const json& j, const std::string& where) {
  MOEKIT_CHECK(j.is_object() && j.size() == 2 && j.contains("bytes") && j.contains("crc32c"), where,
               ": expected {\"bytes\": N, \"crc32c\": \"0x...\"}, got ", clip_for_message(j.dump()));
  FileDigest d;
  d.bytes = static_cast<uint64_t>(json_int(j["bytes"], where, "bytes", 0, std::numeric_limits<int64_t>::max()));
  d.crc32c = parse_hex32(j["crc32c"], where);
  return d;
}

std::string describe(const FileDigest& d) { return std::to_string(d.bytes) + " bytes, crc32c " + hex32(d.crc32c); }

ParseLimits manifest_limits(const char* what) {
  ParseLimits l;
  l.max_bytes = kMaxTextBytes;
  l.max_depth = 4;
  l.what = what;
  return l;
}

bool is_text_file(const std::string& name) { return name == "meta.json" || name == "config.resolved.yaml"; }

}  // namespace

FileDigest digest_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOEKIT_CHECK(fd >= 0, path, ": cannot open to checksum: ", std::strerror(errno));
  FileDigest d;
  std::vector<char> buf(size_t{1} << 20);
  for (;;) {
    const ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      ::close(fd);
      MOEKIT_FAIL(path, ": read failed while checksumming: ", std::strerror(err));
    }
    if (r == 0) break;
    d.crc32c = crc32c(buf.data(), static_cast<size_t>(r), d.crc32c);
    d.bytes += static_cast<uint64_t>(r);
  }
  ::close(fd);
  return d;
}

FileDigest digest_bytes(const std::string& bytes) { return {bytes.size(), crc32c(bytes.data(), bytes.size())}; }

void write_synced(const std::string& path, const std::string& text, const char* fault) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOEKIT_CHECK(fd >= 0, path, ": cannot create: ", std::strerror(errno));
  const bool disk_full = fault != nullptr && fault_point(fault);
  auto fail = [&](const std::string& what, int err) {
    ::close(fd);
    ::unlink(path.c_str());
    MOEKIT_FAIL(path, ": ", what, " failed: ", std::strerror(err));
  };
  const char* p = text.data();
  size_t n = text.size();
  while (n > 0) {
    ssize_t r = disk_full ? (errno = ENOSPC, -1) : ::write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail("write", r < 0 ? errno : EIO);
    p += r;
    n -= static_cast<size_t>(r);
  }
  if (::fsync(fd) != 0) fail("fsync", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    MOEKIT_FAIL(path, ": close failed: ", std::strerror(err));
  }
}

void write_sum_file(const std::string& path, const FileDigest& d) {
  write_synced(path + kSumSuffix, json{{"bytes", d.bytes}, {"crc32c", hex32(d.crc32c)}}.dump() + "\n");
}

FileDigest read_sum_file(const std::string& path) {
  const std::string sum = path + kSumSuffix;
  return digest_of(load_json_file(sum, manifest_limits("checksum file")), sum);
}

std::string manifest_json(int64_t step, const std::map<std::string, FileDigest>& files) {
  json f = json::object();
  for (const auto& [name, d] : files) f[name] = {{"bytes", d.bytes}, {"crc32c", hex32(d.crc32c)}};
  return json{{"format", kFormat}, {"version", 1}, {"step", step}, {"files", f}}.dump(2) + "\n";
}

VerifiedStep verify_step_dir(const std::string& dir) {
  const std::string mpath = (fs::path(dir) / kManifestName).string();
  std::error_code ec;
  MOEKIT_CHECK(fs::exists(mpath, ec), mpath, ": missing; ", dir,
               " is not a committed checkpoint (or was written by a moekit without manifests)");
  const json m = load_json_file(mpath, manifest_limits("manifest"));
  MOEKIT_CHECK(json_value_or<std::string>(m, "format", "") == kFormat, mpath, ": not a moekit checkpoint manifest");
  MOEKIT_CHECK(json_value_or<int64_t>(m, "version", 0) == 1, mpath, ": version ",
               clip_for_message(m.contains("version") ? m["version"].dump() : "(none)"),
               " is not supported (expected 1)");
  for (const auto& [k, v] : m.items())
    MOEKIT_CHECK(k == "format" || k == "version" || k == "step" || k == "files", mpath, ": unexpected field '",
                 clip_for_message(k), "'");
  VerifiedStep out;
  MOEKIT_CHECK(m.contains("step"), mpath, ": field 'step' is missing");
  out.step = json_int(m["step"], mpath, "step", 0, std::numeric_limits<int64_t>::max());
  MOEKIT_CHECK(m.contains("files") && m["files"].is_object(), mpath, ": field 'files' must be an object");
  for (const auto& [name, entry] : m["files"].items()) {
    MOEKIT_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
                     name != kManifestName,
                 mpath, ": invalid file name '", clip_for_message(name), "'");
    out.files[name] = digest_of(entry, mpath + ": files." + name);
  }
  for (const char* required : {"meta.json", "config.resolved.yaml"})
    MOEKIT_CHECK(out.files.count(required), mpath, ": does not list ", required);

  // Exactly the listed files: a file added after the commit is as suspect as one changed.
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    MOEKIT_CHECK(name == kManifestName || out.files.count(name), e.path().string(),
                 ": not listed in the checkpoint's manifest (added after the commit?)");
  }
  MOEKIT_CHECK(!ec, dir, ": cannot list: ", ec.message());
  for (const auto& [name, want] : out.files) {
    const std::string path = (fs::path(dir) / name).string();
    MOEKIT_CHECK(fs::is_regular_file(path, ec), path, ": listed in the manifest but missing");
    const uint64_t size = fs::file_size(path, ec);
    MOEKIT_CHECK(!ec && size == want.bytes, path, ": is ", size, " bytes, the manifest says ", want.bytes,
                 " (truncated or replaced after the commit)");
    FileDigest got;
    if (is_text_file(name)) {
      std::string text = read_file_bounded(path, kMaxTextBytes, name.c_str());
      got = digest_bytes(text);
      out.text[name] = std::move(text);
    } else {
      got = digest_file(path);
    }
    MOEKIT_CHECK(got == want, path, ": does not match the checkpoint's manifest (", describe(got), ", expected ",
                 describe(want), "): the file was changed after the commit or is corrupt");
  }
  return out;
}

void reseal_step_dir(const std::string& dir) {
  std::map<std::string, FileDigest> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name != kManifestName) files[name] = digest_file(e.path().string());
  }
  const std::string base = fs::path(dir).filename().string();
  MOEKIT_CHECK(base.rfind("step_", 0) == 0 && base.size() > 5 && base.size() < 24 &&
                   base.find_first_not_of("0123456789", 5) == std::string::npos,
               dir, ": not a step directory (step_<digits>)");
  const std::string path = (fs::path(dir) / kManifestName).string();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  MOEKIT_CHECK(f != nullptr, path, ": cannot write: ", std::strerror(errno));
  const std::string text = manifest_json(std::stoll(base.substr(5)), files);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  MOEKIT_CHECK(std::fclose(f) == 0 && ok, path, ": write failed");
}

}  // namespace moekit::checkpoint
