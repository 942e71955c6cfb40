// safetensors: header validation (the reference reader's rules, plus duplicate keys and strict
// field shapes), pread-based tensor reads, the atomic single-file writer, the HF-style sharded
// writer and the checkpoint-directory view over model.safetensors / index json + shards.
#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/bounded_parse.h"
#include "core/check.h"

namespace moekit::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A real header nests at most root -> tensor entry -> shape array; a small cap stops a 100 MB
// "[[[[..." header from building a huge DOM.
constexpr int kMaxJsonDepth = 8;
// The index of the largest public models is well under 10 MB.
constexpr uint64_t kMaxIndexBytes = 256ull << 20;
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// Element bit sizes of every dtype the format defines (reference enum `Dtype::bitsize`).
struct DtypeBits { const char* name; uint32_t bits; };
constexpr DtypeBits kDtypeBits[] = {
    {"BOOL", 8}, {"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8}, {"I8", 8},
    {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8},
    {"I16", 16}, {"U16", 16}, {"F16", 16}, {"BF16", 16}, {"I32", 32}, {"U32", 32},
    {"F32", 32}, {"C64", 64}, {"F64", 64}, {"I64", 64}, {"U64", 64}};

bool dtype_bits(const std::string& name, uint32_t* bits) {
  for (const auto& e : kDtypeBits)
    if (name == e.name) { *bits = e.bits; return true; }
  return false;
}

std::string errno_str() { return std::strerror(errno); }

// Parse JSON text with moekit's bounded parser (depth, duplicate keys, NUL bytes, size: see
// core/bounded_parse.h) after the reference reader's strict UTF-8 check. The tags (reference
// rule names) are appended to the messages.
json parse_json_strict(const std::string& text, const std::string& path, const char* what,
                       const char* utf8_tag, const char* json_tag, uint64_t max_bytes) {
  size_t bad = 0;
  MOEKIT_CHECK(valid_utf8(text, &bad), path, ": ", what,
               " is not valid UTF-8 (bad byte at offset ", bad, ")", utf8_tag);
  ParseLimits limits;
  limits.max_bytes = static_cast<size_t>(max_bytes);
  limits.max_depth = kMaxJsonDepth;
  limits.what = what;
  limits.tag = json_tag;
  return parse_json(text, path, limits);
}

void pread_full(int fd, void* dst, size_t n, uint64_t off, const std::string& path,
                const char* what) {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    MOEKIT_CHECK(r >= 0, path, ": reading ", what, " failed: ", errno_str());
    MOEKIT_CHECK(r > 0, path, ": unexpected end of file reading ", what,
                 " (was the file changed after it was opened?)");
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
}

void write_full(int fd, const void* src, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(src);
  while (n > 0) {
    ssize_t r = ::write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    MOEKIT_CHECK(r > 0, path, ": write failed: ", (r < 0 ? errno_str() : "no progress"));
    p += r;
    n -= static_cast<size_t>(r);
  }
}

// Owns the temp file of an atomic write: closes and removes it unless the rename happened.
struct TempFile {
  std::string path;
  int fd = -1;
  bool committed = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!committed) ::unlink(path.c_str());
  }
};

void fsync_dir(const std::string& dir, const std::string& path) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  MOEKIT_CHECK(fd >= 0, path, ": written, but cannot open its directory ", dir,
               " to make the rename durable: ", errno_str());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some file systems cannot fsync a directory (EINVAL); there is nothing more to do there.
  MOEKIT_CHECK(rc == 0 || err == EINVAL, path, ": written, but fsync of directory ", dir,
               " failed: ", std::strerror(err));
}

using Piece = std::pair<const void*, size_t>;

// Readers of `path` see either the old file or the complete new one, never a partial write,
// and after return the new file survives a crash.
void write_file_atomic(const std::string& path, const std::vector<Piece>& pieces) {
  TempFile tmp;
  tmp.path = path + ".tmp." + std::to_string(::getpid());
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (tmp.fd < 0) {
    tmp.committed = true;  // nothing was created
    MOEKIT_FAIL(path, ": cannot create temporary file ", tmp.path, ": ", errno_str());
  }
  for (const auto& pc : pieces) write_full(tmp.fd, pc.first, pc.second, tmp.path);
  MOEKIT_CHECK(::fsync(tmp.fd) == 0, tmp.path, ": fsync failed: ", errno_str());
  int rc = ::close(tmp.fd);
  tmp.fd = -1;
  MOEKIT_CHECK(rc == 0, tmp.path, ": close failed: ", errno_str());
  MOEKIT_CHECK(::rename(tmp.path.c_str(), path.c_str()) == 0, path, ": cannot rename ", tmp.path,
               " over it: ", errno_str());
  tmp.committed = true;
  std::string dir = fs::path(path).parent_path().string();
  fsync_dir(dir.empty() ? "." : dir, path);
}

// Byte size of a tensor to write, with every dimension checked.
uint64_t ref_bytes(const TensorRef& t, const std::string& path) {
  uint64_t n = dtype_size(t.dtype);
  for (int64_t d : t.shape) {
    MOEKIT_CHECK(d >= 0, path, ": tensor '", t.name, "' has negative dimension in shape ",
                 shape_str(t.shape));
    MOEKIT_CHECK(!__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n), path, ": tensor '",
                 t.name, "' shape ", shape_str(t.shape), " overflows 64-bit byte size");
  }
  return n;
}

void check_unique_names(const std::vector<TensorRef>& tensors, const std::string& path) {
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    MOEKIT_CHECK(t.name != "__metadata__", path,
                 ": '__metadata__' is reserved and cannot name a tensor");
    MOEKIT_CHECK(seen.insert(t.name).second, path, ": duplicate tensor name '", t.name, "'");
  }
}

bool is_plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

// A tensor of `f` that can be read as a moekit::DType.
const TensorInfo& readable(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* info = f.find(name);
  MOEKIT_CHECK(info != nullptr, f.path(), ": no tensor '", name, "' in this file");
  MOEKIT_CHECK(info->dtype_supported(), "unsupported dtype ", info->dtype_name, " for tensor '",
               name, "' in ", f.path(), " (moekit reads F32, BF16, F16, I32, I64)");
  return *info;
}

size_t locate(const std::map<std::string, size_t>& where, const std::string& dir,
              const std::string& name) {
  auto it = where.find(name);
  MOEKIT_CHECK(it != where.end(), dir, ": no tensor '", name, "' in this checkpoint");
  return it->second;
}

// Opens the shards of an index and checks both directions of the mapping.
std::vector<SafetensorsFile> open_indexed(const fs::path& dir, const std::string& ipath) {
  json root = parse_json_strict(read_file_bounded(ipath, kMaxIndexBytes, "index"), ipath, "index", "", "",
                                kMaxIndexBytes);
  MOEKIT_CHECK(root.is_object(), ipath, ": index is not a JSON object");
  auto md = root.find("metadata");
  if (md != root.end()) {
    MOEKIT_CHECK(md->is_object(), ipath, ": \"metadata\" is not a JSON object");
    auto ts = md->find("total_size");
    // Loaders ignore the value (some tools write file sizes); only its type is checked.
    MOEKIT_CHECK(ts == md->end() || ts->is_number(), ipath,
                 ": metadata.total_size is not a number");
  }
  auto wm = root.find("weight_map");
  MOEKIT_CHECK(wm != root.end() && wm->is_object(), ipath, ": index has no \"weight_map\" object");
  MOEKIT_CHECK(!wm->empty(), ipath, ": weight_map lists no tensors");

  std::map<std::string, std::vector<std::string>> by_shard;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    MOEKIT_CHECK(it->is_string(), ipath, ": weight_map entry for tensor '", it.key(),
                 "' is not a string");
    const auto& shard = it->get_ref<const std::string&>();
    // Shard names come from the file: never let them point outside the directory.
    MOEKIT_CHECK(is_plain_file_name(shard), ipath, ": weight_map maps tensor '", it.key(),
                 "' to '", shard, "', which is not a plain file name inside the directory");
    by_shard[shard].push_back(it.key());
  }
  for (const auto& [shard, names] : by_shard) {
    std::error_code ec;
    MOEKIT_CHECK(fs::exists(dir / shard, ec), ipath, ": weight_map maps tensor '", names.front(),
                 "' to shard ", (dir / shard).string(), ", which does not exist");
  }
  std::vector<SafetensorsFile> files;
  for (const auto& [shard, names] : by_shard) {
    std::string spath = (dir / shard).string();
    files.push_back(SafetensorsFile::open(spath));
    const SafetensorsFile& f = files.back();
    for (const auto& n : names)
      MOEKIT_CHECK(f.find(n) != nullptr, ipath, ": weight_map maps tensor '", n, "' to ", spath,
                   ", but that shard does not contain it");
    for (const auto& t : f.tensors()) {
      auto e = wm->find(t.name);
      MOEKIT_CHECK(e != wm->end(), spath, ": shard holds tensor '", t.name,
                   "', which the index ", ipath, " does not list");
      MOEKIT_CHECK(e->get_ref<const std::string&>() == shard, spath, ": shard holds tensor '",
                   t.name, "', but the index ", ipath, " maps it to '",
                   e->get_ref<const std::string&>(), "'");
    }
  }
  return files;
}

}  // namespace

// ---- reading ------------------------------------------------------------------------------

SafetensorsFile SafetensorsFile::parse(const std::string& path, const std::string& header_json,
                                       uint64_t header_len, uint64_t file_size) {
  // Rules 1-3 (open() checks them before reading the header; repeated for direct callers).
  MOEKIT_CHECK(file_size >= 8, path, ": file is ", file_size,
               " bytes, shorter than the 8-byte header length field (HeaderTooSmall)");
  MOEKIT_CHECK(header_len <= kMaxSafetensorsHeader, path, ": header length ", header_len,
               " exceeds the ", kMaxSafetensorsHeader, "-byte limit (HeaderTooLarge)");
  MOEKIT_CHECK(header_len <= file_size - 8, path, ": header length ", header_len,
               " runs past the end of the ", file_size, "-byte file (InvalidHeaderLength)");
  MOEKIT_CHECK(header_json.size() == header_len, path, ": header text has ", header_json.size(),
               " bytes but the header length field says ", header_len, " (InvalidHeaderLength)");

  // Rule 4: UTF-8 JSON object of the expected shape.
  const char* kDeser = " (InvalidHeaderDeserialization)";
  json root = parse_json_strict(header_json, path, "header", " (InvalidHeader)", kDeser, kMaxSafetensorsHeader);
  MOEKIT_CHECK(root.is_object(), path, ": header is not a JSON object", kDeser);

  SafetensorsFile f;
  f.path_ = path;
  f.header_len_ = header_len;
  f.file_size_ = file_size;
  struct Entry {
    TensorInfo info;
    uint32_t bits = 0;
    std::vector<uint64_t> dims;
    std::string shape_text;  // as written in the file, for messages
  };
  std::vector<Entry> entries;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      MOEKIT_CHECK(v.is_object(), path, ": __metadata__ must be an object of string to string, ",
                   "got ", v.type_name(), kDeser);
      for (auto m = v.begin(); m != v.end(); ++m) {
        MOEKIT_CHECK(m->is_string(), path, ": __metadata__ value for key '", m.key(),
                     "' must be a string, got ", m->type_name(), kDeser);
        f.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    MOEKIT_CHECK(v.is_object(), path, ": tensor '", name, "' entry is not a JSON object", kDeser);
    for (auto fld = v.begin(); fld != v.end(); ++fld)
      MOEKIT_CHECK(fld.key() == "dtype" || fld.key() == "shape" || fld.key() == "data_offsets",
                   path, ": tensor '", name, "' has unexpected field '", fld.key(),
                   "' (expected dtype, shape, data_offsets)", kDeser);
    auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
    MOEKIT_CHECK(dt != v.end() && dt->is_string(), path, ": tensor '", name,
                 "' has no string field 'dtype'", kDeser);
    MOEKIT_CHECK(sh != v.end() && sh->is_array(), path, ": tensor '", name,
                 "' field 'shape' is missing or not an array", kDeser);
    MOEKIT_CHECK(off != v.end() && off->is_array() && off->size() == 2, path, ": tensor '", name,
                 "' field 'data_offsets' is missing or not an array [BEGIN, END] of length 2",
                 kDeser);
    Entry e;
    e.info.name = name;
    e.info.dtype_name = dt->get<std::string>();
    MOEKIT_CHECK(dtype_bits(e.info.dtype_name, &e.bits), path, ": tensor '", name,
                 "' has unknown dtype '", e.info.dtype_name, "'", kDeser);
    DType t;
    if (dtype_from_name(e.info.dtype_name, &t)) e.info.dtype = t;
    for (const auto& d : *sh) {
      MOEKIT_CHECK(d.is_number_unsigned(), path, ": tensor '", name, "' shape ", sh->dump(),
                   " must hold non-negative integers", kDeser);
      e.dims.push_back(d.get<uint64_t>());
    }
    for (const auto& o : *off)
      MOEKIT_CHECK(o.is_number_unsigned(), path, ": tensor '", name, "' data_offsets ",
                   off->dump(), " must hold non-negative integers", kDeser);
    e.shape_text = sh->dump();
    e.info.begin = (*off)[0].get<uint64_t>();
    e.info.end = (*off)[1].get<uint64_t>();
    entries.push_back(std::move(e));
  }

  // Rules 5-8 in offset order: contiguous tiling from 0, checked sizes, exact byte counts.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.info.begin, a.info.end, a.info.name) <
           std::tie(b.info.begin, b.info.end, b.info.name);
  });
  uint64_t expect_begin = 0;
  for (Entry& e : entries) {
    const TensorInfo& in = e.info;
    MOEKIT_CHECK(in.begin == expect_begin, path, ": tensor '", in.name, "' data_offsets [",
                 in.begin, ", ", in.end, "] ",
                 (expect_begin == 0 ? "do not start the data section at 0"
                                    : "are not contiguous with the previous tensor"),
                 " (expected begin ", expect_begin, "; offsets must tile the data without ",
                 "overlaps or holes) (InvalidOffset)");
    MOEKIT_CHECK(in.end >= in.begin, path, ": tensor '", in.name, "' data_offsets [", in.begin,
                 ", ", in.end, "] have END < BEGIN (InvalidOffset)");
    uint64_t numel = 1, nbits = 0;
    for (uint64_t d : e.dims)
      MOEKIT_CHECK(!__builtin_mul_overflow(numel, d, &numel), path, ": tensor '", in.name,
                   "' shape ", e.shape_text,
                   " element count overflows 64 bits (ValidationOverflow)");
    MOEKIT_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(e.bits), &nbits), path,
                 ": tensor '", in.name, "' bit size (", numel, " elements x ", e.bits,
                 " bits) overflows 64 bits (ValidationOverflow)");
    // A zero dim keeps numel at 0 whatever the others are; moekit shapes are int64, so any dim
    // past INT64_MAX is refused as an overflow too.
    for (uint64_t d : e.dims) {
      MOEKIT_CHECK(d <= static_cast<uint64_t>(INT64_MAX), path, ": tensor '", in.name,
                   "' dimension ", d, " does not fit in int64 (ValidationOverflow)");
      e.info.shape.push_back(static_cast<int64_t>(d));
    }
    MOEKIT_CHECK(nbits % 8 == 0, path, ": tensor '", in.name, "' of dtype ", in.dtype_name,
                 " has ", nbits, " bits, not a whole number of bytes (MisalignedSlice)");
    MOEKIT_CHECK(in.end - in.begin == nbits / 8, path, ": tensor '", in.name, "' data_offsets [",
                 in.begin, ", ", in.end, "] span ", in.end - in.begin, " bytes but ",
                 in.dtype_name, " ", shape_str(e.info.shape), " needs ", nbits / 8,
                 " (TensorInvalidInfo)");
    expect_begin = in.end;
  }
  // Rule 9: the tensors cover the data section exactly (no trailing bytes, not truncated).
  uint64_t data_len = file_size - 8 - header_len;
  MOEKIT_CHECK(expect_begin == data_len, path, ": tensors cover ", expect_begin,
               " data bytes but the file holds ", data_len, " after the header (",
               (data_len > expect_begin ? "trailing bytes" : "file truncated"),
               ") (MetadataIncompleteBuffer)");

  for (Entry& e : entries) {
    f.index_[e.info.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(e.info));
  }
  return f;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOEKIT_CHECK(raw >= 0, path, ": cannot open safetensors file: ", errno_str());
  std::shared_ptr<const int> fd(new int(raw), [](const int* p) {
    ::close(*p);
    delete p;
  });
  struct stat st;
  MOEKIT_CHECK(::fstat(raw, &st) == 0, path, ": fstat failed: ", errno_str());
  MOEKIT_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  // Rules 1-3 before anything is allocated from the untrusted length.
  MOEKIT_CHECK(size >= 8, path, ": file is ", size,
               " bytes, shorter than the 8-byte header length field (HeaderTooSmall)");
  unsigned char len_bytes[8];
  pread_full(raw, len_bytes, 8, 0, path, "the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];  // little-endian
  MOEKIT_CHECK(n <= kMaxSafetensorsHeader, path, ": header length ", n, " exceeds the ",
               kMaxSafetensorsHeader, "-byte limit (HeaderTooLarge)");
  MOEKIT_CHECK(n <= size - 8, path, ": header length ", n, " runs past the end of the ", size,
               "-byte file (InvalidHeaderLength)");
  std::string header(static_cast<size_t>(n), '\0');
  pread_full(raw, header.data(), header.size(), 8, path, "the header");
  SafetensorsFile f = parse(path, header, n, size);
  f.fd_ = std::move(fd);
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::read_raw(const TensorInfo& info, void* dst) const {
  MOEKIT_CHECK(fd_ != nullptr, path_, ": tensor '", info.name,
               "' cannot be read: the header was parsed from memory, no file is open");
  const uint64_t data_len = file_size_ - data_start();
  MOEKIT_CHECK(info.begin <= info.end && info.end <= data_len, path_, ": tensor '", info.name,
               "' data_offsets [", info.begin, ", ", info.end, "] lie outside the ", data_len,
               "-byte data section");
  const std::string what = "tensor '" + info.name + "'";
  pread_full(*fd_, dst, info.nbytes(), data_start() + info.begin, path_, what.c_str());
}

void SafetensorsFile::read_raw_range(const TensorInfo& info, uint64_t byte_offset, size_t n, void* dst) const {
  MOEKIT_CHECK(byte_offset <= info.nbytes() && n <= info.nbytes() - byte_offset, path_, ": read of ", n,
               " bytes at offset ", byte_offset, " runs past the end of tensor '", info.name, "' (",
               info.nbytes(), " bytes)");
  MOEKIT_CHECK(fd_ != nullptr, path_, ": tensor '", info.name,
               "' cannot be read: the header was parsed from memory, no file is open");
  const uint64_t data_len = file_size_ - data_start();
  MOEKIT_CHECK(info.begin <= info.end && info.end <= data_len, path_, ": tensor '", info.name,
               "' data_offsets lie outside the ", data_len, "-byte data section");
  const std::string what = "tensor '" + info.name + "'";
  pread_full(*fd_, dst, n, data_start() + info.begin + byte_offset, path_, what.c_str());
}

HostTensor SafetensorsFile::read(const std::string& name) const {
  const TensorInfo& info = readable(*this, name);
  HostTensor out(info.dtype, info.shape);
  MOEKIT_CHECK(out.nbytes() == info.nbytes(), path_, ": tensor '", name, "' byte size ",
               info.nbytes(), " does not match its shape ", shape_str(info.shape));
  read_raw(info, out.storage.data());
  return out;
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name, const Shape& expect) const {
  const TensorInfo* info = &readable(*this, name);
  MOEKIT_CHECK(dtype_is_float(info->dtype), path_, ": tensor '", name, "' has dtype ",
               info->dtype_name, "; expected a floating dtype (F32, BF16 or F16)");
  MOEKIT_CHECK(expect.empty() || info->shape == expect, path_, ": tensor '", name, "' has shape ",
               shape_str(info->shape), ", expected ", shape_str(expect));
  const size_t n = info->nbytes() / dtype_size(info->dtype);
  std::vector<float> out(n);
  if (info->dtype == DType::kF32) {
    read_raw(*info, out.data());
  } else {
    std::vector<uint16_t> tmp(n);
    read_raw(*info, tmp.data());
    to_f32(out.data(), tmp.data(), info->dtype, n);
  }
  return out;
}

// ---- writing ------------------------------------------------------------------------------

std::string header_entry(const std::string& name, DType dtype, const Shape& shape, uint64_t begin, uint64_t end) {
  std::string h = json(name).dump();
  h += ":{\"dtype\":\"";
  h += dtype_name(dtype);
  h += "\",\"shape\":[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) h += ',';
    h += std::to_string(shape[i]);
  }
  h += "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
  return h;
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Everything is checked before the temp file exists, so a refused write leaves no trace.
  check_unique_names(tensors, path);
  size_t bad = 0;
  for (const auto& [k, v] : metadata)
    MOEKIT_CHECK(valid_utf8(k, &bad) && valid_utf8(v, &bad), path, ": metadata entry '", k,
                 "' is not valid UTF-8");
  std::string header = "{";
  if (!metadata.empty()) header += "\"__metadata__\":" + json(metadata).dump();
  uint64_t offset = 0;
  std::vector<Piece> pieces;
  pieces.reserve(tensors.size() + 2);
  for (const auto& t : tensors) {
    MOEKIT_CHECK(valid_utf8(t.name, &bad), path, ": tensor name '", t.name, "' is not valid UTF-8");
    const uint64_t nb = ref_bytes(t, path);
    MOEKIT_CHECK(nb == 0 || t.data != nullptr, path, ": tensor '", t.name, "' has no data");
    uint64_t end;
    MOEKIT_CHECK(!__builtin_add_overflow(offset, nb, &end), path,
                 ": total tensor bytes overflow 64 bits at tensor '", t.name, "'");
    if (header.size() > 1) header += ',';
    header += header_entry(t.name, t.dtype, t.shape, offset, end);
    if (nb > 0) pieces.emplace_back(t.data, static_cast<size_t>(nb));
    offset = end;
  }
  header += '}';
  // Pad so the data section starts 8-byte aligned in the file, as the reference writer.
  header.append((8 - header.size() % 8) % 8, ' ');
  MOEKIT_CHECK(header.size() <= kMaxSafetensorsHeader, path, ": header would be ", header.size(),
               " bytes, over the ", kMaxSafetensorsHeader, "-byte limit (HeaderTooLarge)");
  unsigned char len_bytes[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  pieces.insert(pieces.begin(), {Piece(len_bytes, 8), Piece(header.data(), header.size())});
  write_file_atomic(path, pieces);
}

void write_sharded(const std::string& dir, const std::vector<TensorRef>& tensors,
                   uint64_t max_shard_bytes) {
  MOEKIT_CHECK(max_shard_bytes > 0, dir, ": max_shard_bytes must be positive");
  check_unique_names(tensors, dir);
  // Greedy split in the given order: a new shard starts when the next tensor would push the
  // current one past the limit; a tensor bigger than the limit gets a shard of its own.
  std::vector<std::vector<TensorRef>> shards(1);
  uint64_t cur = 0, total = 0;
  for (const auto& t : tensors) {
    const uint64_t nb = ref_bytes(t, dir);
    MOEKIT_CHECK(!__builtin_add_overflow(total, nb, &total), dir,
                 ": total tensor bytes overflow 64 bits");
    if (!shards.back().empty() && (cur + nb < cur || cur + nb > max_shard_bytes)) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(t);
    cur += nb;
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  MOEKIT_CHECK(!ec, dir, ": cannot create checkpoint directory: ", ec.message());
  const fs::path d(dir);
  const std::map<std::string, std::string> fmt = {{"format", "pt"}};
  const std::string index_path = (d / kIndexName).string();
  if (shards.size() == 1) {
    write_safetensors((d / kSingleName).string(), shards[0], fmt);
    // A stale index from an earlier sharded save would shadow the new file on load.
    fs::remove(index_path, ec);
    MOEKIT_CHECK(!ec, index_path, ": cannot remove stale index: ", ec.message());
    return;
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors((d / name).string(), shards[i], fmt);
    for (const auto& t : shards[i]) weight_map[t.name] = name;
  }
  // The index goes last: once it exists, every shard it names is complete.
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", std::move(weight_map)}};
  const std::string text = index.dump(2) + "\n";
  write_file_atomic(index_path, {Piece(text.data(), text.size())});
}

// ---- directories --------------------------------------------------------------------------

SafetensorsDir SafetensorsDir::open(const std::string& dir) {
  const fs::path d(dir);
  std::error_code ec;
  MOEKIT_CHECK(fs::is_directory(d, ec), dir, ": not a directory (expected a checkpoint directory ",
               "with model.safetensors or ", kIndexName, ")");
  SafetensorsDir out;
  out.dir_ = dir;
  if (fs::exists(d / kIndexName, ec)) {
    out.files_ = open_indexed(d, (d / kIndexName).string());
  } else if (fs::exists(d / kSingleName, ec)) {
    out.files_.push_back(SafetensorsFile::open((d / kSingleName).string()));
  } else {
    std::vector<std::string> found;
    std::error_code reg_ec;
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().extension() == ".safetensors" && it->is_regular_file(reg_ec))
        found.push_back(it->path().string());
    MOEKIT_CHECK(!ec, dir, ": cannot list directory: ", ec.message());
    std::sort(found.begin(), found.end());
    MOEKIT_CHECK(!found.empty(), dir, ": no ", kIndexName, ", ", kSingleName,
                 " or other *.safetensors file in this directory");
    MOEKIT_CHECK(found.size() == 1, dir, ": ", found.size(), " *.safetensors files (first ",
                 found[0], ") but no ", kIndexName, " saying how they fit together");
    out.files_.push_back(SafetensorsFile::open(found[0]));
  }
  for (size_t i = 0; i < out.files_.size(); ++i)
    for (const auto& t : out.files_[i].tensors()) {
      auto [it, fresh] = out.where_.emplace(t.name, i);
      MOEKIT_CHECK(fresh, dir, ": tensor '", t.name, "' appears in both ",
                   out.files_[it->second].path(), " and ", out.files_[i].path());
    }
  return out;
}

bool SafetensorsDir::has(const std::string& name) const { return where_.count(name) != 0; }

const TensorInfo& SafetensorsDir::info(const std::string& name) const {
  return *files_[locate(where_, dir_, name)].find(name);
}

std::vector<std::string> SafetensorsDir::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

std::vector<float> SafetensorsDir::read_f32(const std::string& name, const Shape& expect) const {
  return files_[locate(where_, dir_, name)].read_f32(name, expect);
}

HostTensor SafetensorsDir::read(const std::string& name) const {
  return files_[locate(where_, dir_, name)].read(name);
}

void SafetensorsDir::read_raw_range(const std::string& name, uint64_t byte_offset, size_t n, void* dst) const {
  const SafetensorsFile& f = files_[locate(where_, dir_, name)];
  f.read_raw_range(*f.find(name), byte_offset, n, dst);
}

}  // namespace moekit::checkpoint
