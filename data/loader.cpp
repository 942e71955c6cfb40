// Loader: split, per-epoch shuffle, packing into windows, global batches, rank slices and
// exact save/restore. See loader.h for the conventions.
#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/rng.h"

namespace moekit::data {

namespace {

uint64_t u64_of(const Philox4& b) { return (static_cast<uint64_t>(b[0]) << 32) | b[1]; }

// Uniform integer in [0, n) from 64 random bits (Lemire's multiply-shift; bias < n / 2^64).
uint64_t below(uint64_t r, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(r) * n) >> 64);
}

struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void add(uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  }
};

}  // namespace

Loader::Loader(TokenDataset data, const LoaderConfig& cfg) : data_(std::move(data)), cfg_(cfg) {
  MOEKIT_CHECK(cfg_.seq_len >= 1, "loader: seq_len ", cfg_.seq_len, " must be >= 1");
  MOEKIT_CHECK(cfg_.global_batch >= 1, "loader: global_batch ", cfg_.global_batch, " must be >= 1");
  MOEKIT_CHECK(cfg_.vocab_size >= 1, "loader: vocab_size ", cfg_.vocab_size, " must be >= 1");
  MOEKIT_CHECK(cfg_.valid_fraction >= 0 && cfg_.valid_fraction < 1, "loader: valid_fraction ", cfg_.valid_fraction,
               " must be in [0, 1)");
  MOEKIT_CHECK(cfg_.eos_id < cfg_.vocab_size, "loader: eos_id ", cfg_.eos_id, " out of range [0, ", cfg_.vocab_size,
               ")");
  if (cfg_.scan_tokens) data_.check_vocab(cfg_.vocab_size);

  const int64_t n = data_.num_documents();
  MOEKIT_CHECK(n >= 1, "loader: the dataset (", data_.num_files() ? data_.file(0).path : std::string("?"),
               ") has no documents");
  len_.resize(static_cast<size_t>(n));
  append_eos_.assign(static_cast<size_t>(n), 0);
  int64_t last = 0;
  for (int64_t d = 0; d < n; ++d) {
    const int64_t l = data_.document_length(d);
    if (cfg_.eos_id >= 0) {
      if (l > 0) data_.read(d, l - 1, 1, &last);
      append_eos_[d] = (l == 0 || last != cfg_.eos_id) ? 1 : 0;
    }
    len_[d] = l + append_eos_[d];
  }

  // Split: the documents with the smallest keys from (split_seed, "loader.split") are held out.
  is_valid_.assign(static_cast<size_t>(n), 0);
  if (cfg_.valid_fraction > 0) {
    MOEKIT_CHECK(n >= 2, "loader: valid_fraction ", cfg_.valid_fraction, " needs at least 2 documents, the dataset has ",
                 n);
    const int64_t n_valid =
        std::clamp<int64_t>(std::llround(cfg_.valid_fraction * static_cast<double>(n)), 1, n - 1);
    const CounterRng rng(cfg_.split_seed, "loader.split");
    std::vector<std::pair<uint64_t, int64_t>> keys(static_cast<size_t>(n));
    for (int64_t d = 0; d < n; ++d) keys[d] = {u64_of(rng.bits(static_cast<uint64_t>(d))), d};
    std::nth_element(keys.begin(), keys.begin() + n_valid, keys.end());
    for (int64_t i = 0; i < n_valid; ++i) is_valid_[keys[i].second] = 1;
  }
  for (int64_t d = 0; d < n; ++d) (is_valid_[d] ? valid_docs_ : train_docs_).push_back(d);

  for (int64_t d : train_docs_) train_tokens_ += len_[d];
  windows_per_epoch_ = train_tokens_ >= 1 ? (train_tokens_ - 1) / cfg_.seq_len : 0;
  MOEKIT_CHECK(windows_per_epoch_ >= 1, "loader: the training split has ", train_tokens_,
               " tokens, fewer than one window of seq_len + 1 = ", cfg_.seq_len + 1);
  valid_plan_.order = valid_docs_;
  build_starts(&valid_plan_);
  const int64_t valid_tokens = valid_plan_.starts.back();
  valid_windows_ = valid_tokens >= 1 ? (valid_tokens - 1) / cfg_.seq_len : 0;

  Fnv f;
  for (uint64_t v : {static_cast<uint64_t>(n), static_cast<uint64_t>(data_.num_tokens()),
                     static_cast<uint64_t>(cfg_.eos_id), static_cast<uint64_t>(cfg_.shuffle)})
    f.add(v);
  for (int64_t d = 0; d < n; ++d) f.add(static_cast<uint64_t>(len_[d]) * 2 + is_valid_[d]);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(f.h));
  fingerprint_ = hex;
}

std::vector<int64_t> Loader::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order = train_docs_;
  if (!cfg_.shuffle) return order;
  const CounterRng rng(cfg_.seed, "loader.epoch" + std::to_string(epoch));
  for (int64_t i = static_cast<int64_t>(order.size()) - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(below(u64_of(rng.bits(static_cast<uint64_t>(i))), i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

void Loader::build_starts(Plan* plan) const {
  plan->starts.resize(plan->order.size() + 1);
  plan->starts[0] = 0;
  for (size_t i = 0; i < plan->order.size(); ++i) plan->starts[i + 1] = plan->starts[i] + len_[plan->order[i]];
}

const Loader::Plan& Loader::epoch_plan(int64_t epoch) {
  for (const Plan& p : cache_)
    if (p.epoch == epoch) return p;
  Plan& p = cache_[next_slot_];
  next_slot_ = 1 - next_slot_;
  p.epoch = epoch;
  p.order = epoch_order(epoch);
  build_starts(&p);
  return p;
}

void Loader::fill_window(const Plan& plan, int64_t w, int64_t* out) const {
  const int64_t need = cfg_.seq_len + 1;
  int64_t pos = w * cfg_.seq_len;
  MOEKIT_CHECK(pos + need <= plan.starts.back(), "loader: window ", w, " past the end of the stream");
  // The document holding `pos`: the last start <= pos.
  size_t k = static_cast<size_t>(std::upper_bound(plan.starts.begin(), plan.starts.end(), pos) -
                                 plan.starts.begin()) - 1;
  int64_t filled = 0;
  while (filled < need) {
    const int64_t doc = plan.order[k];
    const int64_t off = pos - plan.starts[k];
    const int64_t take = std::min(len_[doc] - off, need - filled);
    const int64_t raw_len = len_[doc] - append_eos_[doc];
    const int64_t raw_take = std::max<int64_t>(0, std::min(take, raw_len - off));
    if (raw_take > 0) data_.read(doc, off, raw_take, out + filled);
    for (int64_t i = raw_take; i < take; ++i) out[filled + i] = cfg_.eos_id;  // the appended EOS
    for (int64_t i = 0; i < raw_take; ++i) {
      const int64_t t = out[filled + i];
      MOEKIT_CHECK(t >= 0 && t < cfg_.vocab_size, data_.position(doc, off + i), ": token id ", t,
                   " out of range [0, vocab_size = ", cfg_.vocab_size, ")");
    }
    filled += take;
    pos += take;
    ++k;
  }
}

void Loader::emit_row(const Plan& plan, int64_t epoch, int64_t w, int64_t row, Batch* b) const {
  std::vector<int64_t> buf(static_cast<size_t>(cfg_.seq_len + 1));
  fill_window(plan, w, buf.data());
  std::copy(buf.begin(), buf.end() - 1, b->inputs.begin() + row * cfg_.seq_len);
  std::copy(buf.begin() + 1, buf.end(), b->targets.begin() + row * cfg_.seq_len);
  b->epoch[row] = epoch;
  b->window[row] = w;
}

Batch Loader::build(int64_t first_global_window, int64_t row_begin, int64_t row_end) {
  Batch b;
  b.rows = row_end - row_begin;
  b.seq_len = cfg_.seq_len;
  b.inputs.resize(static_cast<size_t>(b.rows * b.seq_len));
  b.targets.resize(b.inputs.size());
  b.epoch.resize(static_cast<size_t>(b.rows));
  b.window.resize(b.epoch.size());
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t g = first_global_window + r;
    const int64_t e = g / windows_per_epoch_, w = g % windows_per_epoch_;
    emit_row(epoch_plan(e), e, w, r - row_begin, &b);
  }
  return b;
}

Batch Loader::next_global_batch() { return next_batch(0, 1); }

Batch Loader::next_batch(int rank, int world) {
  const int64_t g = cfg_.global_batch;
  MOEKIT_CHECK(world >= 1 && rank >= 0 && rank < world, "loader: rank ", rank, " out of range for world size ", world);
  MOEKIT_CHECK(g % world == 0, "loader: global_batch ", g, " is not divisible by the data-parallel world size ", world);
  const int64_t per = g / world;
  Batch b = build(next_window_, rank * per, (rank + 1) * per);
  next_window_ += g;
  ++step_;
  return b;
}

Batch Loader::slice_for_rank(const Batch& global, int rank, int world) {
  MOEKIT_CHECK(world >= 1 && rank >= 0 && rank < world, "loader: rank ", rank, " out of range for world size ", world);
  MOEKIT_CHECK(global.rows % world == 0, "loader: batch of ", global.rows,
               " rows is not divisible by the data-parallel world size ", world);
  const int64_t per = global.rows / world, r0 = rank * per, s = global.seq_len;
  Batch b;
  b.rows = per;
  b.seq_len = s;
  b.inputs.assign(global.inputs.begin() + r0 * s, global.inputs.begin() + (r0 + per) * s);
  b.targets.assign(global.targets.begin() + r0 * s, global.targets.begin() + (r0 + per) * s);
  b.epoch.assign(global.epoch.begin() + r0, global.epoch.begin() + r0 + per);
  b.window.assign(global.window.begin() + r0, global.window.begin() + r0 + per);
  return b;
}

Batch Loader::valid_batch(int64_t first_window, int64_t count) const {
  MOEKIT_CHECK(first_window >= 0 && count >= 0 && first_window + count <= valid_windows_, "loader: validation windows [",
               first_window, ", ", first_window + count, ") out of range [0, ", valid_windows_, ")");
  Batch b;
  b.rows = count;
  b.seq_len = cfg_.seq_len;
  b.inputs.resize(static_cast<size_t>(count * cfg_.seq_len));
  b.targets.resize(b.inputs.size());
  b.epoch.assign(static_cast<size_t>(count), -1);
  b.window.resize(static_cast<size_t>(count));
  for (int64_t r = 0; r < count; ++r) emit_row(valid_plan_, -1, first_window + r, r, &b);
  return b;
}

// ---- state -----------------------------------------------------------------------------------

LoaderState Loader::state() const {
  LoaderState s;
  s.epoch = next_window_ / windows_per_epoch_;
  s.window = next_window_ % windows_per_epoch_;
  s.step = step_;
  s.seq_len = cfg_.seq_len;
  s.seed = cfg_.seed;
  s.fingerprint = fingerprint_;
  return s;
}

void Loader::restore(const LoaderState& s) {
  MOEKIT_CHECK(s.seq_len == cfg_.seq_len, "loader state: seq_len ", s.seq_len, " differs from the config's ",
               cfg_.seq_len);
  MOEKIT_CHECK(s.seed == cfg_.seed, "loader state: seed ", s.seed, " differs from the config's ", cfg_.seed);
  MOEKIT_CHECK(s.fingerprint == fingerprint_, "loader state: dataset fingerprint ", s.fingerprint,
               " differs from this dataset's ", fingerprint_,
               " (different files, documents, validation split or EOS handling)");
  MOEKIT_CHECK(s.epoch >= 0 && s.window >= 0 && s.window < windows_per_epoch_ && s.step >= 0, "loader state: epoch ",
               s.epoch, " window ", s.window, " step ", s.step, " out of range (", windows_per_epoch_,
               " windows per epoch)");
  int64_t at = 0;
  MOEKIT_CHECK(!__builtin_mul_overflow(s.epoch, windows_per_epoch_, &at) &&
                   !__builtin_add_overflow(at, s.window, &at),
               "loader state: epoch ", s.epoch, " x ", windows_per_epoch_, " windows per epoch overflows");
  next_window_ = at;
  step_ = s.step;
}

nlohmann::json LoaderState::to_json() const {
  return {{"version", 1}, {"epoch", epoch}, {"window", window},           {"step", step},
          {"seq_len", seq_len}, {"seed", seed}, {"fingerprint", fingerprint}};
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  MOEKIT_CHECK(j.is_object(), "loader state: expected a JSON object, got ", j.dump());
  auto get = [&](const char* key) -> const nlohmann::json& {
    MOEKIT_CHECK(j.contains(key), "loader state: missing field '", key, "' in ", j.dump());
    return j.at(key);
  };
  MOEKIT_CHECK(json_value_or<int64_t>(j, "version", 0) == 1, "loader state: version ", get("version").dump(),
               ", expected 1");
  LoaderState s;
  for (auto [key, field] : {std::pair<const char*, int64_t*>{"epoch", &s.epoch},
                            {"window", &s.window},
                            {"step", &s.step},
                            {"seq_len", &s.seq_len}}) {
    const auto& v = get(key);
    MOEKIT_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, "loader state: field '", key, "' = ", v.dump(),
                 " is not a non-negative integer");
    *field = v.get<int64_t>();
  }
  MOEKIT_CHECK(get("seed").is_number_integer(), "loader state: field 'seed' = ", get("seed").dump(),
               " is not an integer");
  s.seed = get("seed").get<uint64_t>();
  MOEKIT_CHECK(get("fingerprint").is_string(), "loader state: field 'fingerprint' is not a string");
  s.fingerprint = get("fingerprint").get<std::string>();
  return s;
}

bool LoaderState::operator==(const LoaderState& o) const {
  return epoch == o.epoch && window == o.window && step == o.step && seq_len == o.seq_len && seed == o.seed &&
         fingerprint == o.fingerprint;
}

}  // namespace moekit::data
