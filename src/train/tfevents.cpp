#include "train/tfevents.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/check.h"

namespace moekit::train {

namespace {

void put_varint(std::string* s, uint64_t v) {
  while (v >= 0x80) {
    s->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  s->push_back(static_cast<char>(v));
}

template <typename T>
void put_le(std::string* s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // x86 and aarch64 are little-endian, as the format is
  s->append(b, sizeof(T));
}

void put_bytes_field(std::string* s, uint32_t field, const std::string& bytes) {
  put_varint(s, (field << 3) | 2);
  put_varint(s, bytes.size());
  s->append(bytes);
}

std::string event_head(double wall_time, int64_t step) {
  std::string e;
  e.push_back(0x09);  // field 1, fixed64: wall_time
  put_le(&e, wall_time);
  if (step != 0) {
    e.push_back(0x10);  // field 2, varint: step (proto3 omits zero)
    put_varint(&e, static_cast<uint64_t>(step));
  }
  return e;
}

double now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c_masked(const void* data, size_t n) {
  uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

std::string event_file_version(double wall_time) {
  std::string e = event_head(wall_time, 0);
  put_bytes_field(&e, 3, "brain.Event:2");
  return e;
}

std::string event_scalar(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes_field(&v, 1, tag);
  v.push_back(0x15);  // field 2, fixed32: simple_value
  put_le(&v, value);
  std::string summary;
  put_bytes_field(&summary, 1, v);
  std::string e = event_head(wall_time, step);
  put_bytes_field(&e, 5, summary);
  return e;
}

std::string event_session_start(double wall_time, int64_t step) {
  std::string log;
  log.push_back(0x08);  // SessionLog.status = START (1)
  log.push_back(0x01);
  std::string e = event_head(wall_time, step);
  put_bytes_field(&e, 7, log);
  return e;
}

std::string tfrecord(const std::string& data) {
  std::string r;
  const uint64_t len = data.size();
  put_le(&r, len);
  put_le(&r, crc32c_masked(r.data(), 8));
  r.append(data);
  put_le(&r, crc32c_masked(data.data(), data.size()));
  return r;
}

TfEventsWriter::TfEventsWriter(const std::string& logdir) {
  std::filesystem::create_directories(logdir);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  char name[512];
  std::snprintf(name, sizeof name, "events.out.tfevents.%010lld.%s.%d.moekit", static_cast<long long>(now()), host,
                static_cast<int>(getpid()));
  path_ = (std::filesystem::path(logdir) / name).string();
  f_ = std::fopen(path_.c_str(), "wb");
  MOEKIT_CHECK(f_ != nullptr, "cannot create TensorBoard event file ", path_);
  write_record(event_file_version(now()));
  flush();
}

TfEventsWriter::~TfEventsWriter() {
  if (f_) std::fclose(f_);
}

void TfEventsWriter::write_record(const std::string& event) {
  const std::string rec = tfrecord(event);
  MOEKIT_CHECK(std::fwrite(rec.data(), 1, rec.size(), f_) == rec.size(), "write failed: ", path_);
}

void TfEventsWriter::scalar(const std::string& tag, int64_t step, double value) {
  write_record(event_scalar(now(), step, tag, static_cast<float>(value)));
}

void TfEventsWriter::session_start(int64_t step) { write_record(event_session_start(now(), step)); }

void TfEventsWriter::flush() { std::fflush(f_); }

void TfEventsWriter::sync() {
  MOEKIT_CHECK(std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0, "sync failed: ", path_);
}

}  // namespace moekit::train
