// Thin layer over the HDF5 C API for the training checkpoints: owning handles, HDF5 errors
// turned into moekit::Error (HDF5's own stderr printing is switched off, so a user sees one
// message naming the file and the dataset, not a stack dump), scalar attributes, and the file
// access properties every checkpoint file is opened with.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>

namespace moekit::checkpoint::h5 {

// Switches off HDF5's automatic error printing for this thread. Every entry point that talks
// to HDF5 calls it first (cheap), because the setting is per thread in thread-safe builds. The
// first call also switches off HDF5's exit handler (see hdf5_util.cpp: it crashes on a file whose
// close failed on a full disk).
void quiet();

// The messages on HDF5's error stack, innermost first (e.g. "truncated file: eof = ..."),
// joined by "; ". Clears the stack.
std::string error_stack();

// Throws moekit::Error "<where>: <what> failed (<hdf5 messages>)" when rc < 0. `where` names
// the file and, where there is one, the dataset.
void check(int64_t rc, const std::string& where, const char* what);

// An HDF5 identifier closed by the matching H5?close on destruction.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports failure (H5Fclose is where buffered metadata reaches the disk, so
  // its result matters); the destructor's close ignores errors.
  herr_t close() {
    herr_t rc = id_ >= 0 ? closer_(id_) : 0;
    id_ = H5I_INVALID_HID;
    return rc;
  }
  void reset() {
    if (id_ >= 0) closer_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Wraps a freshly returned id, throwing (as check()) when it is negative.
Handle own(hid_t id, Handle::Closer closer, const std::string& where, const char* what);

// File access properties: strong close degree (H5Fclose really closes, even if a handle
// leaked) and no file locking. Locking buys nothing here (each file has one writer and is
// never modified after it is renamed into place) and fails on file systems without lock
// support (Lustre, NFS) with "unable to lock the file".
Handle file_access_plist(const std::string& where);

// Scalar attributes on an object. The readers check the stored type's class and size before
// converting, so an attribute written as something else is an error, not a silent cast.
void write_attr_u32(hid_t obj, const char* name, uint32_t v, const std::string& where);
void write_attr_i64(hid_t obj, const char* name, int64_t v, const std::string& where);
bool has_attr(hid_t obj, const char* name, const std::string& where);
uint32_t read_attr_u32(hid_t obj, const char* name, const std::string& where);
int64_t read_attr_i64(hid_t obj, const char* name, const std::string& where);

}  // namespace moekit::checkpoint::h5
