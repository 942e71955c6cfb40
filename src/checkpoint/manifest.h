// The manifest of a training checkpoint step: every file of the step directory with its size
// and CRC-32C, written last by the commit (manifest.json) and checked first by the reader, so
// that no byte of meta.json, config.resolved.yaml or a rank file is used (and no HDF5 header is
// parsed) unless it is exactly what the commit wrote. It catches what per-dataset checksums
// cannot: edited metadata (meta.json's loader state, HDF5 shapes, links and attributes), a rank
// file copied in from another step or run, files added to or missing from the directory.
//
//   manifest.json  {"format": "moekit-train-checkpoint", "version": 1, "step": N,
//                   "files": {"meta.json": {"bytes": B, "crc32c": C}, "rank_00000.h5": {...}, ...}}
//
// Each rank computes its own file's digest after closing it (reading it back once, from the page
// cache) and leaves it beside the file as rank_R.h5.sum; the commit folds the sums into the
// manifest, so rank 0 never reads the other ranks' files.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace moekit::checkpoint {

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kSumSuffix = ".sum";

struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
  bool operator==(const FileDigest& o) const { return bytes == o.bytes && crc32c == o.crc32c; }
};

// Size and CRC-32C of a file, read in 1 MiB pieces (bounded memory whatever its size).
FileDigest digest_file(const std::string& path);
FileDigest digest_bytes(const std::string& bytes);

// Writes a new small file and fsyncs it; on any failure the file is removed again, so a full
// disk leaves no empty or truncated file behind. `fault` (optional) names the fault-injection
// point (core/fault.h) reached once per call: a kill there, or this write failing as on a full disk.
void write_synced(const std::string& path, const std::string& text, const char* fault = nullptr);

// PATH.sum next to a closed rank file, and reading it back (errors name the file).
void write_sum_file(const std::string& path, const FileDigest& d);
FileDigest read_sum_file(const std::string& path);

// The manifest text for `step` listing `files` (name -> digest).
std::string manifest_json(int64_t step, const std::map<std::string, FileDigest>& files);

// A step directory checked against its manifest: the directory holds exactly the listed files
// (plus the manifest), each of the listed size and CRC. The small text files come back as the
// verified bytes (read once, so what was checked is what is parsed); rank files are checked
// by size and checksum before anything opens them. Errors name the directory and the file.
struct VerifiedStep {
  int64_t step = 0;
  std::map<std::string, std::string> text;   // meta.json, config.resolved.yaml: verified contents
  std::map<std::string, FileDigest> files;   // every listed file
};
VerifiedStep verify_step_dir(const std::string& dir);

// Re-makes DIR/manifest.json from the step directory's files as they are now. Never called by
// moekit itself: for the tests (and repair tools) that edit a checkpoint behind its manifest, so
// that the checks behind the manifest can be exercised. The step is the directory's number.
void reseal_step_dir(const std::string& dir);

}  // namespace moekit::checkpoint
