// The tokenize pipeline: a chunk reader (main thread), tokenizing workers, an in-order writer.
#include "data/tokenize_job.h"

#include <glob.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/log.h"
#include "data/indexed_dataset.h"
#include "data/unicode_text.h"

namespace moekit::data {

namespace fs = std::filesystem;

std::vector<std::string> expand_input_patterns(const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const std::string& item : items) {
    if (item.find_first_of("*?[") == std::string::npos) {
      out.push_back(item);
    } else {
      glob_t g{};
      const int rc = ::glob(item.c_str(), GLOB_ERR, nullptr, &g);
      if (rc == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);  // sorted by glob
      globfree(&g);
      MOEKIT_CHECK(rc == 0, "--input ", item, ": ", rc == GLOB_NOMATCH ? "matches no file" : "cannot be expanded");
    }
  }
  for (const std::string& f : out) {
    std::error_code ec;
    MOEKIT_CHECK(fs::is_regular_file(f, ec), f, ": no such file (or not a regular file)");
    std::FILE* fp = std::fopen(f.c_str(), "rb");
    MOEKIT_CHECK(fp != nullptr, f, ": cannot open for reading (", std::strerror(errno), ")");
    std::fclose(fp);
  }
  return out;
}

namespace {

struct Chunk {
  int64_t seq = 0;
  int file = 0;
  int64_t first_line = 1;  // line number of data[0]
  bool doc_end = true;     // text: the chunk ends its file's document (jsonl: always)
  std::string data;
  // Filled by a worker.
  std::vector<int32_t> tokens;
  std::vector<size_t> doc_ends;  // offsets in tokens where a document ends (after its EOS)
  std::string error;
};

// Line and column of byte `at` of a chunk.
std::string position(const TokenizeOptions& opt, const Chunk& c, size_t at) {
  const std::string_view d(c.data);
  const int64_t line = c.first_line + std::count(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(at), '\n');
  const size_t line_start = at == 0 ? 0 : d.rfind('\n', at - 1);
  const size_t col = line_start == std::string_view::npos ? at + 1 : at - line_start;
  return opt.inputs[c.file] + ":" + std::to_string(line) + ":" + std::to_string(col);
}

void check_utf8(const TokenizeOptions& opt, const Chunk& c, std::string_view s, size_t offset) {
  const size_t ok = utf8_valid_prefix(s);
  if (ok == s.size()) return;
  char hex[8];
  std::snprintf(hex, sizeof(hex), "0x%02X", static_cast<unsigned>(static_cast<uint8_t>(s[ok])));
  MOEKIT_FAIL(position(opt, c, offset + ok), ": invalid UTF-8 (byte ", hex, ")");
}

void encode_jsonl(const TokenizeOptions& opt, TokenEncoder* enc, Chunk* c) {
  // Each line through core/bounded_parse.h: a document is one object with a text field, so a
  // deep nesting or a duplicate key is malformed input, refused naming the line.
  ParseLimits line_limits;
  line_limits.max_bytes = opt.max_doc_bytes;
  line_limits.what = "line";
  const std::string& d = c->data;
  int64_t line = c->first_line;
  for (size_t pos = 0; pos < d.size(); ++line) {
    size_t end = d.find('\n', pos);
    if (end == std::string::npos) end = d.size();
    const std::string_view text(d.data() + pos, end - pos);
    const std::string where = opt.inputs[c->file] + ":" + std::to_string(line);
    const size_t start = pos;
    pos = end + 1;
    if (text.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
    check_utf8(opt, *c, text, start);
    const nlohmann::json j = parse_json(std::string(text), where, line_limits);
    MOEKIT_CHECK(j.is_object(), where, ": expected a JSON object, got ", j.type_name());
    const auto it = j.find(opt.json_key);
    MOEKIT_CHECK(it != j.end(), where, ": no key \"", opt.json_key, "\" (choose the text field with --json-key)");
    MOEKIT_CHECK(it->is_string(), where, ": \"", opt.json_key, "\" is ", it->type_name(), ", expected a string");
    enc->encode(it->get_ref<const std::string&>(), &c->tokens, opt.parse_special);
    if (opt.eos_id >= 0) c->tokens.push_back(opt.eos_id);
    c->doc_ends.push_back(c->tokens.size());
  }
}

void encode_chunk(const TokenizeOptions& opt, TokenEncoder* enc, Chunk* c) {
  if (opt.format == "jsonl") {
    encode_jsonl(opt, enc, c);
    return;
  }
  check_utf8(opt, *c, c->data, 0);
  enc->encode(c->data, &c->tokens, opt.parse_special);
  if (c->doc_end) {
    if (opt.eos_id >= 0) c->tokens.push_back(opt.eos_id);
    c->doc_ends.push_back(c->tokens.size());
  }
}

// Reads the inputs in chunks of about opt.chunk_bytes: whole lines (jsonl) or, for text files,
// pieces cut after a "\n" followed by a character where both Qwen's pattern and NFC start afresh.
class ChunkReader {
 public:
  ChunkReader(const TokenizeOptions& opt, bool can_cut_text) : opt_(opt), can_cut_(can_cut_text) {}
  ~ChunkReader() { close(); }

  bool next(Chunk* c) {
    for (;;) {
      if (f_ == nullptr && !open_next()) return false;
      while (!eof_ && buf_.size() < opt_.chunk_bytes) fill();
      size_t cut = find_cut(0);
      while (cut == 0 && !eof_) {  // no cut point yet: read on, up to the limit
        MOEKIT_CHECK(buf_.size() <= opt_.max_doc_bytes, opt_.inputs[file_], ":", line_, ": ",
                     opt_.format == "jsonl" ? "a line is longer than " : "no place to cut the text within ",
                     opt_.max_doc_bytes, " bytes (raise --max-doc-mb)");
        const size_t searched = buf_.size();
        fill();
        cut = find_cut(searched > 0 ? searched - 1 : 0);
      }
      if (cut == 0) cut = buf_.size();  // the end of the file
      const bool file_done = eof_ && cut == buf_.size();
      if (opt_.format == "jsonl" && cut == 0) {  // an empty file or its end
        close();
        continue;
      }
      c->file = file_;
      c->first_line = line_;
      c->doc_end = opt_.format == "jsonl" || file_done;
      c->data.assign(buf_, 0, cut);
      buf_.erase(0, cut);
      line_ += std::count(c->data.begin(), c->data.end(), '\n');
      if (file_done) close();
      return true;
    }
  }
  int64_t bytes_read() const { return bytes_; }
  int files_opened() const { return file_ + 1; }

 private:
  bool open_next() {
    if (file_ + 1 >= static_cast<int>(opt_.inputs.size())) return false;
    ++file_;
    f_ = std::fopen(opt_.inputs[file_].c_str(), "rb");
    MOEKIT_CHECK(f_ != nullptr, opt_.inputs[file_], ": cannot open for reading (", std::strerror(errno), ")");
    buf_.clear();
    eof_ = false;
    line_ = 1;
    return true;
  }
  void close() {
    if (f_) std::fclose(f_);
    f_ = nullptr;
  }
  void fill() {
    const size_t old = buf_.size(), want = std::max<size_t>(opt_.chunk_bytes, 1 << 16);
    buf_.resize(old + want);
    const size_t got = std::fread(buf_.data() + old, 1, want, f_);
    buf_.resize(old + got);
    bytes_ += static_cast<int64_t>(got);
    if (got < want) {
      MOEKIT_CHECK(!std::ferror(f_), opt_.inputs[file_], ": read error (", std::strerror(errno), ")");
      eof_ = true;
    }
  }
  // End of the last complete piece in buf_ (searching back to `from`), 0 when there is none.
  size_t find_cut(size_t from) const {
    if (eof_) return buf_.size();
    if (opt_.format == "jsonl") {
      const size_t nl = buf_.rfind('\n');
      return nl == std::string::npos || nl + 1 <= from ? 0 : nl + 1;
    }
    if (!can_cut_) return 0;
    for (size_t i = buf_.size(); i-- > from;) {
      i = buf_.rfind('\n', i);
      if (i == std::string::npos || i < from) return 0;
      if (i + 1 < buf_.size() && starts_afresh(i + 1)) return i + 1;
    }
    return 0;
  }
  bool starts_afresh(size_t at) const {
    const std::string_view rest(buf_.data() + at, std::min<size_t>(4, buf_.size() - at));
    const auto b = static_cast<uint8_t>(rest[0]);
    if (b < 0x80) return !(b == ' ' || (b >= 0x09 && b <= 0x0D));
    int len = 0;
    if (utf8_valid_prefix(rest) == 0) return false;  // let the worker report it
    const uint32_t cp = utf8_decode_at(rest, 0, &len);
    return !is_unicode_space(cp) && nfc_boundary_before(cp);
  }

  const TokenizeOptions& opt_;
  const bool can_cut_;
  std::FILE* f_ = nullptr;
  int file_ = -1;
  std::string buf_;
  bool eof_ = false;
  int64_t line_ = 1, bytes_ = 0;
};

// Workers take chunks from a queue and post them, encoded, to a map keyed by sequence number.
class WorkerPool {
 public:
  WorkerPool(const Tokenizer& tok, const TokenizeOptions& opt, int threads) {
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this, &tok, &opt] { run(tok, opt); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void submit(std::unique_ptr<Chunk> c) {
    {
      std::lock_guard<std::mutex> lk(m_);
      queue_.push_back(std::move(c));
    }
    work_cv_.notify_one();
  }
  std::unique_ptr<Chunk> take(int64_t seq) {  // blocks until chunk `seq` is done
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return done_.count(seq) > 0; });
    auto c = std::move(done_[seq]);
    done_.erase(seq);
    return c;
  }

 private:
  void run(const Tokenizer& tok, const TokenizeOptions& opt) {
    std::unique_ptr<TokenEncoder> enc;
    for (;;) {
      std::unique_ptr<Chunk> c;
      {
        std::unique_lock<std::mutex> lk(m_);
        work_cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        c = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        if (!enc) enc = std::make_unique<TokenEncoder>(tok);
        encode_chunk(opt, enc.get(), c.get());
      } catch (const std::exception& e) {
        c->error = e.what();
      }
      {
        std::lock_guard<std::mutex> lk(m_);
        const int64_t seq = c->seq;
        done_[seq] = std::move(c);
      }
      done_cv_.notify_all();
    }
  }

  std::mutex m_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<std::unique_ptr<Chunk>> queue_;
  std::map<int64_t, std::unique_ptr<Chunk>> done_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

std::string mb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", bytes / 1e6);
  return buf;
}

}  // namespace

TokenizeStats tokenize_files(const Tokenizer& tok, const TokenizeOptions& opt) {
  MOEKIT_CHECK(opt.format == "jsonl" || opt.format == "text", "--format '", opt.format, "' (expected jsonl or text)");
  MOEKIT_CHECK(!opt.inputs.empty(), "no input files");
  MOEKIT_CHECK(opt.chunk_bytes > 0 && opt.max_doc_bytes >= opt.chunk_bytes, "chunk size ", opt.chunk_bytes,
               " and document limit ", opt.max_doc_bytes, " are inconsistent");
  const auto t0 = std::chrono::steady_clock::now();
  TokenizeStats st;
  st.threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  st.vocab_size = tok.num_ids();
  uint64_t total_bytes = 0;
  for (const auto& f : opt.inputs) total_bytes += fs::file_size(f);

  bool newline_in_special = false;
  for (const auto& s : tok.specials()) newline_in_special |= s.content.find('\n') != std::string::npos;
  const bool can_cut = tok.pattern().splits_after_newline() && !newline_in_special;
  const fs::path parent = fs::path(opt.out_prefix).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  IndexedDatasetWriter writer(opt.out_prefix, tok.num_ids());
  st.dtype = writer.dtype();
  ChunkReader reader(opt, can_cut);
  // Declared after the writer, so on an error the workers stop before its temp files go.
  WorkerPool pool(tok, opt, st.threads);
  const int64_t max_in_flight = 2 * st.threads + 2;
  int64_t submitted = 0, written = 0;
  auto last_report = t0;
  auto write_next = [&] {
    std::unique_ptr<Chunk> c = pool.take(written++);
    if (!c->error.empty()) throw Error(c->error);
    size_t at = 0;
    for (size_t end : c->doc_ends) {
      writer.append_tokens(c->tokens.data() + at, static_cast<int64_t>(end - at));
      writer.end_document();
      ++st.documents;
      at = end;
    }
    writer.append_tokens(c->tokens.data() + at, static_cast<int64_t>(c->tokens.size() - at));
    st.tokens += static_cast<int64_t>(c->tokens.size());
  };
  for (;;) {
    auto c = std::make_unique<Chunk>();
    if (!reader.next(c.get())) break;
    c->seq = submitted++;
    pool.submit(std::move(c));
    while (submitted - written >= max_in_flight) write_next();
    if (opt.between_chunks) opt.between_chunks();
    const auto now = std::chrono::steady_clock::now();
    const double since = std::chrono::duration<double>(now - last_report).count();
    if (opt.progress_seconds > 0 && since >= opt.progress_seconds) {
      last_report = now;
      const double secs = std::chrono::duration<double>(now - t0).count();
      const double done = static_cast<double>(reader.bytes_read());
      const double rate = done / std::max(secs, 1e-9);
      log_info("data tokenize: ", mb(done), " of ", mb(static_cast<double>(total_bytes)), " (",
               static_cast<int>(100.0 * done / std::max<double>(1.0, static_cast<double>(total_bytes))), "%), ",
               st.documents, " documents, ", st.tokens, " tokens, ", mb(rate), "/s, about ",
               static_cast<int64_t>((static_cast<double>(total_bytes) - done) / std::max(rate, 1.0)), " s left");
    }
  }
  while (written < submitted) write_next();
  writer.finish();
  st.files = reader.files_opened();
  st.bytes = reader.bytes_read();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace moekit::data
