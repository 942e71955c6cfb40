// TensorBoard event files without TensorFlow: TFRecord framing (length, masked CRC32C of the
// length, a serialized Event protobuf, masked CRC32C of the data) and the few Event fields a
// scalar log needs, encoded by hand (Event.wall_time/step/file_version/summary/session_log,
// Summary.Value.tag/simple_value). TensorBoard discovers any file whose name contains
// "tfevents"; the first record is the file-version event.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/crc32c.h"

namespace moekit::train {

using moekit::crc32c;  // lives in core: checkpoints checksum with it too
uint32_t crc32c_masked(const void* data, size_t n);

// Serialized Event protobufs (exposed for the byte-exact tests).
std::string event_file_version(double wall_time);
std::string event_scalar(double wall_time, int64_t step, const std::string& tag, float value);
std::string event_session_start(double wall_time, int64_t step);
// One TFRecord around `data`.
std::string tfrecord(const std::string& data);

class TfEventsWriter {
 public:
  // Creates LOGDIR/events.out.tfevents.<time>.<host>.<pid>.moekit and writes the version event.
  explicit TfEventsWriter(const std::string& logdir);
  ~TfEventsWriter();
  TfEventsWriter(const TfEventsWriter&) = delete;
  TfEventsWriter& operator=(const TfEventsWriter&) = delete;

  void scalar(const std::string& tag, int64_t step, double value);
  // A restart marker at `step`: TensorBoard drops events with step >= `step` that were written
  // before it (the orphaned tail of a run that crashed after its last checkpoint).
  void session_start(int64_t step);
  void flush();
  // flush() + fsync: every event written so far is on disk (before a checkpoint commits).
  void sync();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  std::string path_;
  FILE* f_ = nullptr;
};

}  // namespace moekit::train
