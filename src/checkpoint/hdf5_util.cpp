#include "checkpoint/hdf5_util.h"

#include <vector>

#include "core/check.h"

namespace moekit::checkpoint::h5 {

void quiet() {
  // HDF5 1.10 cannot close a file whose final flush failed (a full disk): the file object stays
  // registered but half freed, and the library's exit handler then crashes on it (SIGSEGV in
  // H5F__close_cb, HDFFV-11052, fixed in 1.14). Every moekit handle is closed explicitly before
  // the process exits, so the handler has nothing to do: it is switched off before the library
  // initialises (H5dont_atexit only works before that, hence first, once).
  static const bool no_exit_handler = (H5dont_atexit(), true);
  (void)no_exit_handler;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

namespace {

herr_t collect(unsigned /*n*/, const H5E_error2_t* err, void* client) {
  auto* msgs = static_cast<std::vector<std::string>*>(client);
  if (err && err->desc && *err->desc) msgs->emplace_back(err->desc);
  return 0;
}

}  // namespace

std::string error_stack() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect, &msgs);
  H5Eclear2(H5E_DEFAULT);
  // The innermost few say what went wrong; the outer ones only repeat "can't open object".
  std::string out;
  for (size_t i = 0; i < msgs.size() && i < 3; ++i) out += (i ? "; " : "") + msgs[i];
  return out.empty() ? "no HDF5 error message" : out;
}

void check(int64_t rc, const std::string& where, const char* what) {
  if (rc < 0) MOEKIT_FAIL(where, ": ", what, " failed (HDF5: ", error_stack(), ")");
}

Handle own(hid_t id, Handle::Closer closer, const std::string& where, const char* what) {
  check(id, where, what);
  return Handle(id, closer);
}

Handle file_access_plist(const std::string& where) {
  Handle fapl = own(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, where, "H5Pcreate(FILE_ACCESS)");
  check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), where, "H5Pset_fclose_degree");
#if H5_VERSION_GE(1, 10, 7)
  check(H5Pset_file_locking(fapl.get(), false, true), where, "H5Pset_file_locking");
#endif
  return fapl;
}

namespace {

void write_scalar_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* v,
                       const std::string& where) {
  Handle space = own(H5Screate(H5S_SCALAR), H5Sclose, where, "H5Screate");
  Handle attr = own(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, where,
                    "H5Acreate2");
  check(H5Awrite(attr.get(), mem_type, v), where, "H5Awrite");
}

// Reads a one-element integer attribute after checking that it is stored as an integer of
// `size` bytes with the expected signedness.
void read_int_attr(hid_t obj, const char* name, hid_t mem_type, size_t size, bool is_signed, void* out,
                   const std::string& where) {
  const std::string at = where + ": attribute '" + name + "'";
  Handle attr = own(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, at, "H5Aopen");
  Handle type = own(H5Aget_type(attr.get()), H5Tclose, at, "H5Aget_type");
  Handle space = own(H5Aget_space(attr.get()), H5Sclose, at, "H5Aget_space");
  const H5T_sign_t sign = H5Tget_sign(type.get());
  MOEKIT_CHECK(H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_size(type.get()) == size &&
                   sign == (is_signed ? H5T_SGN_2 : H5T_SGN_NONE),
               at, ": expected a ", (is_signed ? "signed" : "unsigned"), " ", size * 8, "-bit integer");
  MOEKIT_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, at, ": expected a single value, found ",
               H5Sget_simple_extent_npoints(space.get()));
  check(H5Aread(attr.get(), mem_type, out), at, "H5Aread");
}

}  // namespace

void write_attr_u32(hid_t obj, const char* name, uint32_t v, const std::string& where) {
  write_scalar_attr(obj, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, &v, where);
}

void write_attr_i64(hid_t obj, const char* name, int64_t v, const std::string& where) {
  write_scalar_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, where);
}

bool has_attr(hid_t obj, const char* name, const std::string& where) {
  htri_t r = H5Aexists(obj, name);
  check(r, where, "H5Aexists");
  return r > 0;
}

uint32_t read_attr_u32(hid_t obj, const char* name, const std::string& where) {
  uint32_t v = 0;
  read_int_attr(obj, name, H5T_NATIVE_UINT32, 4, false, &v, where);
  return v;
}

int64_t read_attr_i64(hid_t obj, const char* name, const std::string& where) {
  int64_t v = 0;
  read_int_attr(obj, name, H5T_NATIVE_INT64, 8, true, &v, where);
  return v;
}

}  // namespace moekit::checkpoint::h5
