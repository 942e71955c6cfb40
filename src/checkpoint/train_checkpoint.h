// Training checkpoints in HDF5 (DESIGN.md section 7). One directory per step:
//   CKPT_DIR/step_00000100/
//     rank_00000.h5        groups /master, /exp_avg, /exp_avg_sq: one f32 dataset per HF
//                          parameter name (full tensors, or the rows a rank owns, see below);
//                          every dataset carries a `crc32c` attribute over its bytes
//     meta.json            step, tokens, loader/RNG/scaler state, layout, file list (rank 0)
//                          (required: "step" (integer) and "files"; the rest is the trainer's)
//     config.resolved.yaml the run config (rank 0)
//   CKPT_DIR/latest        text file holding the name of the last committed directory
// Commit is atomic: everything is written into step_N.tmp/, fsynced, renamed to step_N/, the
// parent fsynced, then `latest` is replaced by write-temp-and-rename. Older step_* directories
// beyond `keep` are removed afterwards. A step_N.tmp left by a crash is ignored and cleaned.
// Each rank file is written as rank_R.h5.partial and renamed by close(), so a rank that died
// mid-write leaves a name commit refuses rather than a truncated file it would list.
// docs/CHECKPOINTS.md has the protocol and the resume rules.
//
// Datasets are named by HF parameter name, so a checkpoint written by any rank layout can be
// read back by any other: a reader asks for a tensor by name (or a row range of it, for an
// expert-parallel rank that owns some experts) and the reader finds which file holds it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moekit::checkpoint {

// Name of a step directory: "step_00000100".
std::string step_dir_name(int64_t step);
// Name of a rank's file in it: "rank_00000.h5".
std::string rank_file_name(int rank);
// The step of a committed directory name ("step_<digits>", any number of digits); false for
// anything else, including step_N.tmp.
bool parse_step_dir_name(const std::string& name, int64_t* step);

class TrainCheckpointWriter {
 public:
  // Starts CKPT_DIR/step_N.tmp/ (created by rank 0, which first removes a stale one of the same
  // step; other ranks must call after a barrier with create_dir=false) and opens
  // rank_R.h5.partial in it.
  TrainCheckpointWriter(const std::string& ckpt_dir, int64_t step, int rank = 0, bool create_dir = true);
  // An unclosed writer leaves only a .tmp directory (its file truncated); the writer that created
  // the directory removes it when destroyed by an exception (a write failed, e.g. a full disk:
  // the step cannot be committed and its space is wanted back).
  ~TrainCheckpointWriter();
  TrainCheckpointWriter(const TrainCheckpointWriter&) = delete;
  TrainCheckpointWriter& operator=(const TrainCheckpointWriter&) = delete;

  // group: "master", "exp_avg" or "exp_avg_sq" (any name without '/' is allowed). `row_offset`
  // > 0 or a shape smaller than `full_rows` records that this file holds rows [row_offset,
  // row_offset + shape[0]) of a tensor with `full_rows` rows (expert parallelism); -1 = the
  // whole tensor. Writing the same group/name twice into one file is an error. Across the
  // files of a step every row of a tensor must be written exactly once (the reader refuses
  // overlapping pieces): with expert data parallelism only one replica of an expert writes.
  void write(const std::string& group, const std::string& name, const Shape& shape,
             const float* data, int64_t row_offset = 0, int64_t full_rows = -1);
  // Closes and fsyncs this rank's file and renames it to rank_R.h5. Every rank calls it before
  // rank 0 commits.
  void close();
  const std::string& tmp_dir() const { return tmp_dir_; }
  const std::string& final_dir() const { return final_dir_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string tmp_dir_, final_dir_;
  bool owns_dir_ = false;
};

// Rank 0, after every rank closed its writer: writes meta.json (adding "step" and "files": the
// rank files found; if meta has "world_size", exactly that many must be found, and a
// rank_R.h5.partial left by a writer that never closed is an error) and config.resolved.yaml into
// the .tmp directory, fsyncs, renames to step_N (an existing step_N, e.g. re-committed after a
// resume, is swapped out atomically), updates `latest`, removes every other step_*.tmp, and
// prunes: the committed step and the newest keep-1 older step directories stay (keep <= 0: keep
// all); directories of later steps (a branch abandoned by resuming from an older checkpoint) are
// left alone, with a warning. Returns the final directory.
std::string commit_checkpoint(const std::string& ckpt_dir, int64_t step, const nlohmann::json& meta,
                              const std::string& config_yaml, int keep);

class TrainCheckpointReader {
 public:
  // Opens a committed step directory: checks every file against manifest.json (size and
  // CRC-32C, before HDF5 parses a byte), validates meta.json, the rank files' step and rank
  // attributes, and their structure (hard links only; groups of f32 datasets, contiguous and
  // unfiltered, with only moekit's attributes). Errors name the directory and the file at fault.
  explicit TrainCheckpointReader(const std::string& step_dir);
  ~TrainCheckpointReader();

  const std::string& dir() const { return dir_; }
  const nlohmann::json& meta() const { return meta_; }
  int64_t step() const;
  bool has(const std::string& group, const std::string& name) const;
  Shape shape(const std::string& group, const std::string& name) const;  // full shape
  // Error naming the directory, dataset and both shapes unless the full shape is `expected`
  // (a loader calls it with the model's shape before read(), which trusts the caller's buffer).
  void check_shape(const std::string& group, const std::string& name, const Shape& expected) const;
  // Tensor names stored in a group (over all files), sorted: lets a loader report unexpected
  // or missing names instead of silently ignoring them.
  std::vector<std::string> names(const std::string& group) const;
  // The groups present in any file, sorted.
  std::vector<std::string> groups() const;
  // Read rows [row_begin, row_begin + rows) (rows = -1: all) of a tensor into out (must hold
  // rows * row_numel floats), assembling from the files that hold pieces of it. Verifies each
  // piece's crc32c; a mismatch is an error naming the file and dataset. Rows not covered by any
  // piece are an error; the rows of a rank-0 (scalar) tensor are its one element.
  void read(const std::string& group, const std::string& name, float* out, int64_t row_begin = 0,
            int64_t rows = -1) const;
  // Reads every dataset once, in bounded pieces, and checks its checksum; with require_finite
  // also that it holds no NaN or infinity (errors name the file, dataset and element).
  void verify_all(bool require_finite = false) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string dir_;
  nlohmann::json meta_;
};

// What a caller requires of a checkpoint beyond its integrity (the trainer: the model's tensors
// and shapes, finite values, the meta fields it restores); throws moekit::Error saying why not.
using CheckpointCheck = std::function<void(const TrainCheckpointReader&)>;

// `resume`: "auto" -> the directory named by CKPT_DIR/latest, falling back (with a warning
// naming the reason) to older step directories, newest first, when it fails to open, verify or
// pass `check` (all of them, newest first, when `latest` is missing or unreadable); "" when there
// is no committed checkpoint, an error naming each failure when there are some but none passes
// (starting from scratch would then overwrite them). "" or "none" -> "" (no resume). Any other
// value is a step directory path (or a step directory name inside ckpt_dir) that must open,
// verify and pass `check` (error otherwise). Without `check`, verify_all() reads the data. It
// reads every byte of each candidate: with many ranks call it on rank 0 and broadcast.
std::string resolve_resume(const std::string& ckpt_dir, const std::string& resume, const CheckpointCheck& check = {});

// Committed step directories (CKPT_DIR/step_<digits>), oldest first; none if CKPT_DIR is absent.
std::vector<std::string> list_checkpoints(const std::string& ckpt_dir);

}  // namespace moekit::checkpoint
