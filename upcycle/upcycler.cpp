// The streaming upcycle: validate input, lay out and reserve the output, then per unit (the
// embedding, each decoder layer, the final norm, the LM head) build a list of independent work
// items — slabs of at most kItemElems output elements — and run them on the compute threads.
// An item computes its slab in f32, converts it to the output dtype into a buffer from the
// WriteQueue's pool and queues it for its final place in the file; the I/O threads write it.
// The bytes do not depend on which thread ran or wrote which item.
#include "upcycle/upcycler.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/shard_writer.h"
#include "checkpoint/tokenizer_files.h"
#include "core/check.h"
#include "core/log.h"
#include "model/model.h"
#include "upcycle/dense_source.h"
#include "upcycle/expert_fill.h"
#include "upcycle/plan_io.h"
#include "upcycle/staging_dir.h"
#include "upcycle/write_queue.h"

namespace moekit::upcycle {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kItemElems = int64_t{1} << 20;  // output elements per work item (2 MB of bf16)
constexpr int64_t kSubElems = int64_t{1} << 14;   // f32 sub-block of a slab (64 KB, in L2)

// Per-thread buffers, reused across items.
struct Scratch {
  std::vector<float> values;  // the slab in f32
  std::vector<float> normals;  // neuron-mode normals of a down row (fill_expert_rows's scratch)
};

using Item = std::function<void(Scratch&)>;

// Runs items on `threads` threads (dynamic schedule); the first failure is rethrown after all
// threads stop, so a bad write or an interrupt surfaces as one moekit::Error.
void run_items(const std::vector<Item>& items, int threads) {
  std::exception_ptr error;
  std::mutex mu;
  std::atomic<bool> failed{false};
  const auto n = static_cast<int64_t>(items.size());
#pragma omp parallel num_threads(threads)
  {
    thread_local Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        check_interrupted();
        items[static_cast<size_t>(i)](scratch);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
        failed.store(true);
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

template <typename T>
void grow(std::vector<T>* v, size_t n) {
  if (v->size() < n) v->resize(n);
}

// Converts `n` f32 values to the output dtype and queues them for element offset e0 of tensor t.
void emit(const checkpoint::ShardWriter& w, WriteQueue* q, size_t t, int64_t e0, const float* src, int64_t n) {
  const DType dt = w.entry(t).dtype;
  const size_t nb = static_cast<size_t>(n) * dtype_size(dt);
  WriteQueue::Buffer buf = q->acquire(nb);
  from_f32_streaming(buf->data(), dt, src, static_cast<size_t>(n));
  q->submit(std::move(buf), t, static_cast<uint64_t>(e0) * dtype_size(dt), nb);
}

class Run {
 public:
  Run(const Recipe& r, const DenseSource& dense, const checkpoint::ShardWriter& w, WriteQueue* q, int threads)
      : r_(r), dense_(dense), w_(w), q_(q), threads_(threads), g_(make_geometry(r, dense.config())),
        scales_(output_scales(r, g_)) {
    threshold_ = r.reinit_mode == ReinitMode::kElement ? ratio_threshold(r.ratio()) : 0;
  }

  const Geometry& geometry() const { return g_; }
  const Scales& scales() const { return scales_; }
  uint64_t threshold() const { return threshold_; }
  uint64_t expert_elements() const { return expert_elements_; }

  // Copy items for a tensor present in both models (converted to the output dtype).
  void add_copy(const std::string& name, std::vector<Item>* items) const {
    const size_t t = w_.index(name);
    const int64_t n = shape_numel(w_.entry(t).shape);
    const bool raw = dense_.dtype(name) == w_.entry(t).dtype;
    for (int64_t e0 = 0; e0 < n; e0 += kItemElems) {
      const int64_t m = std::min(kItemElems, n - e0);
      items->push_back([this, name, t, e0, m, raw](Scratch& s) {
        if (raw) {
          const size_t es = dtype_size(w_.entry(t).dtype), nb = static_cast<size_t>(m) * es;
          WriteQueue::Buffer buf = q_->acquire(nb);
          dense_.read_raw(name, e0, m, buf->data());
          q_->submit(std::move(buf), t, static_cast<uint64_t>(e0) * es, nb);
        } else {
          grow(&s.values, static_cast<size_t>(m));
          dense_.read_f32(name, e0, m, s.values.data());
          emit(w_, q_, t, e0, s.values.data(), m);
        }
      });
    }
  }

  // One sparse layer: read the dense FFN, plan, then every expert slab, router and gate.
  LayerRecord sparse_layer(int64_t l, LayerPlan* plan) {
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
    ffn_.width = g_.dense_width;
    ffn_.hidden = g_.hidden;
    const int64_t n = g_.dense_width * g_.hidden;
    // down is read in its HF layout (for its statistics), then packed into ffn_.down_p's panels.
    std::array<std::vector<float>*, 3> bufs = {&ffn_.gate, &ffn_.up, &down_hf_};
    std::array<TensorStats*, 3> stats = {&ffn_.gate_stats, &ffn_.up_stats, &ffn_.down_stats};
    const char* projs[3] = {"gate_proj", "up_proj", "down_proj"};
    // Read in pieces of whole statistics blocks, on every thread (three tensors alone would leave
    // most cores idle on a large machine); the block sums then give the stats in a fixed order.
    const int64_t blocks = (n + kStatsBlock - 1) / kStatsBlock;
    constexpr int64_t kLoadBlocks = 64;  // 1 MB of f32 per item
    std::array<std::vector<double>, 3> sums, sqs;
    std::vector<Item> load;
    for (int k = 0; k < 3; ++k) {
      bufs[k]->resize(static_cast<size_t>(n));
      sums[k].resize(static_cast<size_t>(blocks));
      sqs[k].resize(static_cast<size_t>(blocks));
      const std::string name = p + projs[k] + ".weight";
      for (int64_t b0 = 0; b0 < blocks; b0 += kLoadBlocks)
        load.push_back([this, k, n, b0, b1 = std::min(blocks, b0 + kLoadBlocks), name, &bufs, &sums, &sqs](Scratch&) {
          const int64_t e0 = b0 * kStatsBlock, e1 = std::min(n, b1 * kStatsBlock);
          dense_.read_f32(name, e0, e1 - e0, bufs[k]->data() + e0);
          block_sums(bufs[k]->data(), n, b0, b1, sums[k].data(), sqs[k].data());
        });
    }
    run_items(load, threads_);
    for (int k = 0; k < 3; ++k) *stats[k] = stats_of_blocks(sums[k].data(), sqs[k].data(), n);
    const int64_t panels = (g_.hidden + kDownPanel - 1) / kDownPanel;
    ffn_.down_p.resize(static_cast<size_t>(panels * kDownPanel * g_.dense_width));
    std::vector<Item> transpose;
    for (int64_t g = 0; g < panels; g += 8)
      transpose.push_back([this, g, panels](Scratch&) {
        pack_down_panels(down_hf_.data(), g_.hidden, g_.dense_width, g, std::min(panels, g + 8), ffn_.down_p.data());
      });
    run_items(transpose, threads_);
    *plan = make_layer_plan(r_, g_, l);

    LayerRecord rec;
    rec.layer = l;
    rec.sparse = true;
    rec.gate = ffn_.gate_stats;
    rec.up = ffn_.up_stats;
    rec.down = ffn_.down_stats;
    const int64_t E = g_.routed;
    std::vector<std::atomic<uint64_t>> counts(static_cast<size_t>((E + 1) * 3));
    // One spec per (expert, projection); the shared expert is expert E.
    std::vector<ExpertTensorSpec> specs;
    std::vector<size_t> tensor;  // output tensor index of each spec
    for (int64_t e = 0; e <= E; ++e) {
      const bool shared = e == E;
      if (shared && g_.shared == 0) break;
      const int64_t width = shared ? g_.shared_width() : g_.expert_width;
      const std::string pre = shared ? shared_prefix(l) : expert_prefix(l, e);
      const bool reinit = !shared || r_.reinit_shared;
      const std::vector<int32_t>& flags = shared ? plan->shared_reinit : plan->routed_reinit;
      for (int k = 0; k < 3; ++k) {
        ExpertTensorSpec s;
        s.proj = static_cast<Proj>(k);
        s.width = width;
        s.hidden = g_.hidden;
        s.src_index = (shared ? plan->shared_index.data() : plan->routed_index.data() + e * width);
        s.neuron_reinit = reinit && !flags.empty() ? flags.data() + (shared ? 0 : e * width) : nullptr;
        s.threshold = reinit ? threshold_ : 0;
        const bool source = r_.reinit_distribution == ReinitDistribution::kSource;
        s.mean = source ? static_cast<float>(stats[k]->mean) : 0.f;
        s.std = static_cast<float>(source ? stats[k]->std : dense_.config().initializer_range);
        const bool down = s.proj == Proj::kDown;
        s.scale = static_cast<float>(shared ? (down ? scales_.shared_down : scales_.shared_gate_up)
                                            : (down ? scales_.routed_down : scales_.routed_gate_up));
        const std::string name = pre + projs[k] + ".weight";
        s.key = philox_key(r_.seed, name);
        specs.push_back(s);
        tensor.push_back(w_.index(name));
        expert_elements_ += static_cast<uint64_t>(s.rows() * s.cols());
      }
    }
    std::vector<Item> items;
    // A slab is computed in sub-blocks of about kSubElems f32 values that stay in L2, each
    // converted to the output dtype at once; the slab then goes out in one pwrite.
    auto slab = [this, &specs, &tensor, &counts](size_t i, int64_t r0, int64_t r1, Scratch& sc) {
      const ExpertTensorSpec& s = specs[i];
      // Down sub-blocks are whole panels of 16 rows: the gather works in 16x16 tiles.
      const int64_t cols = s.cols(), sub = s.proj == Proj::kDown ? kDownPanel : std::max<int64_t>(1, kSubElems / cols);
      const DType dt = w_.entry(tensor[i]).dtype;
      const size_t es = dtype_size(dt), nb = static_cast<size_t>((r1 - r0) * cols) * es;
      grow(&sc.values, static_cast<size_t>(sub * cols));
      grow(&sc.normals, static_cast<size_t>(s.width));
      WriteQueue::Buffer buf = q_->acquire(nb);
      uint64_t n = 0;
      for (int64_t a = r0; a < r1; a += sub) {
        const int64_t b = std::min(r1, a + sub);
        n += fill_expert_rows(sc.values.data(), s, ffn_, a, b, sc.normals.data());
        // Streaming stores: the buffer goes to the disk and is not read back here.
        from_f32_streaming(buf->data() + static_cast<size_t>((a - r0) * cols) * es, dt, sc.values.data(),
                           static_cast<size_t>((b - a) * cols));
      }
      counts[i].fetch_add(n);
      q_->submit(std::move(buf), tensor[i], static_cast<uint64_t>(r0 * cols) * es, nb);
    };
    // gate/up: a slab of rows of one expert; each row is one dense row, read once.
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].proj == Proj::kDown) continue;
      const int64_t rows_per = std::max<int64_t>(1, kItemElems / specs[i].cols());
      for (int64_t r0 = 0; r0 < specs[i].rows(); r0 += rows_per)
        items.push_back([slab, i, r0, r1 = std::min(specs[i].rows(), r0 + rows_per)](Scratch& sc) { slab(i, r0, r1, sc); });
    }
    // down: a block of kDownRows hidden rows for every expert in turn, so the block of dense
    // rows the gathers read (kDownRows * h_FFN floats) stays in cache across all experts.
    constexpr int64_t kDownRows = 32;
    for (int64_t r0 = 0; r0 < g_.hidden; r0 += kDownRows)
      items.push_back([slab, &specs, r0, r1 = std::min(g_.hidden, r0 + kDownRows)](Scratch& sc) {
        for (size_t i = 0; i < specs.size(); ++i)
          if (specs[i].proj == Proj::kDown) slab(i, r0, r1, sc);
      });
    // Router: virtual groups share rows; the shared-expert gate starts at zero or N(0, std).
    const float std = static_cast<float>(r_.router_init_std);
    const size_t tr = w_.index(p + "gate.weight");
    const int64_t group = r_.mode == UpcycleMode::kVirtualGroup ? g_.granularity : 1;
    items.push_back([this, tr, std, group, key = philox_key(r_.seed, p + "gate.weight")](Scratch& sc) {
      grow(&sc.values, static_cast<size_t>(g_.routed * g_.hidden));
      fill_router_rows(sc.values.data(), key, g_.hidden, 0, g_.routed, r_.router_init == RouterInit::kZero, std,
                       group);
      emit(w_, q_, tr, 0, sc.values.data(), g_.routed * g_.hidden);
    });
    if (g_.shared > 0) {
      const size_t tg = w_.index(p + "shared_expert_gate.weight");
      items.push_back([this, tg, std, key = philox_key(r_.seed, p + "shared_expert_gate.weight")](Scratch& sc) {
        grow(&sc.values, static_cast<size_t>(g_.hidden));
        fill_router_rows(sc.values.data(), key, g_.hidden, 0, 1, r_.shared_gate_init == SharedGateInit::kZero, std,
                         1);
        emit(w_, q_, tg, 0, sc.values.data(), g_.hidden);
      });
    }
    run_items(items, threads_);
    rec.routed_reinit.resize(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e)
      for (int k = 0; k < 3; ++k) rec.routed_reinit[static_cast<size_t>(e)][k] = counts[static_cast<size_t>(e * 3 + k)];
    for (int k = 0; k < 3; ++k) rec.shared_reinit[k] = counts[static_cast<size_t>(E * 3 + k)];
    return rec;
  }

 private:
  const Recipe& r_;
  const DenseSource& dense_;
  const checkpoint::ShardWriter& w_;
  WriteQueue* q_;
  int threads_;
  Geometry g_;
  Scales scales_;
  uint64_t threshold_ = 0;
  uint64_t expert_elements_ = 0;
  DenseFfn ffn_;                // reused layer to layer
  std::vector<float> down_hf_;  // the layer's dense down in HF layout, before packing
};

// "model.layers.12.self_attn..." -> 12; top-level tensors -> -1.
int64_t layer_of(const std::string& name) {
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return -1;
  return std::stoll(name.substr(pre.size()));
}

void check_not_inside(const std::string& dense, const std::string& out) {
  std::error_code ec;
  const fs::path d = fs::weakly_canonical(dense, ec), o = fs::weakly_canonical(out, ec);
  const std::string ds = d.string() + "/", os = o.string() + "/";
  MOEKIT_CHECK(ds.compare(0, os.size(), os) != 0, "--out ", out, " would replace the dense checkpoint ", dense,
               " (or a directory holding it); choose another output directory");
}

void copy_side_files(const DenseSource& dense, const config::ModelConfig& moe, const std::string& dir) {
  // The dense model's generation config (eos lists, pad id, sampling defaults) carries over, as it
  // does through train -> export (checkpoint/hf_checkpoint.h says when one is generated instead).
  checkpoint::write_hf_side_files(dir, moe, checkpoint::source_generation_config(dense.dir()));
  checkpoint::ExportTokenizer::from_source(dense.dir()).write_into(dir);
}

}  // namespace

UpcycleSummary upcycle(Recipe recipe, const UpcycleOptions& opt) {
  InterruptGuard guard;
  const auto t0 = std::chrono::steady_clock::now();
  const char* kernels = kernel_level_name();  // also checks MOEKIT_UPCYCLE_KERNELS before any work
  const DenseSource dense = DenseSource::open(opt.dense_dir);
  resolve_recipe(&recipe, dense.config());
  check_not_inside(opt.dense_dir, opt.out_dir);
  UpcycleSummary sum;
  sum.recipe = recipe;
  sum.moe = moe_config(recipe, dense.config());
  // One compute thread per core: the writes go through the WriteQueue's own threads.
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  sum.threads = opt.threads > 0 ? opt.threads : cores;
  sum.io_threads = opt.io_threads > 0 ? opt.io_threads : 16;

  model::ParamStore specs;
  model::declare_model_params(sum.moe, &specs);
  std::vector<checkpoint::ShardEntry> entries;
  uint64_t bytes = 0;
  for (const auto& s : specs.specs()) {
    entries.push_back({s.name, recipe.dtype, s.shape});
    bytes += static_cast<uint64_t>(s.numel()) * dtype_size(recipe.dtype);
  }
  // The plan is small next to the weights: perms and sources are a few int32 per neuron.
  const uint64_t plan_bytes = static_cast<uint64_t>(sum.moe.num_hidden_layers) * 64 *
                              static_cast<uint64_t>(sum.moe.num_experts + 1) *
                              static_cast<uint64_t>(sum.moe.moe_intermediate_size + 64) * 4;
  StagingDir stage(opt.out_dir, opt.overwrite, bytes + plan_bytes + (uint64_t{64} << 20));
  // Data sections 4 KiB-aligned and O_DIRECT for aligned slabs: with Qwen shapes (hidden a
  // multiple of 2048 elements) every slab qualifies and the page cache is bypassed.
  // MOEKIT_DIRECT_IO=0 turns it off (for comparisons; the bytes are the same).
  const char* dio = std::getenv("MOEKIT_DIRECT_IO");
  const bool direct = dio == nullptr || std::string(dio) != "0";
  checkpoint::ShardWriter writer(stage.path(), std::move(entries),
                                 checkpoint::ShardWriterOptions{recipe.max_shard_size, 4096, direct});
  copy_side_files(dense, sum.moe, stage.path());

  // A few buffers per thread keep both sides busy; each is one slab (2 MB of bf16 at most).
  WriteQueue queue(&writer, sum.io_threads, static_cast<size_t>(2 * (sum.threads + sum.io_threads)));
  Run run(recipe, dense, writer, &queue, sum.threads);
  sum.geometry = run.geometry();
  sum.scales = run.scales();
  log_info("upcycle: ", dense.dir(), " (", dense.layout_name(), ", ", dense.config().num_hidden_layers,
           " layers, FFN ", sum.geometry.dense_width, ") -> ", mode_name(recipe.mode), ": ", sum.geometry.routed,
           " routed + ", sum.geometry.shared, " shared chunks of ", sum.geometry.expert_width, " from ",
           sum.geometry.copies, " copies; reinit ", recipe.ratio(), "; ", sum.scales.note, "; ",
           static_cast<double>(bytes) / 1e9, " GB in ", writer.num_shards(), " shard(s), ", sum.threads,
           " compute + ", sum.io_threads, " I/O thread(s), ", kernels, " kernels");
  PlanHeader header;
  header.dense_dir = dense.dir();
  header.dense_layout = dense.layout_name();
  header.dense_dtype = dtype_name(dense.dtype("model.embed_tokens.weight"));
  header.geometry = sum.geometry;
  header.scales = sum.scales;
  header.threshold = run.threshold();
  PlanRecorder recorder(recipe, header);

  // Units in output order: top-level tensors before layer 0 / after the last layer, then each
  // layer's own tensors. Within a unit, items run in parallel.
  const auto& names = specs.specs();
  size_t i = 0;
  while (i < names.size()) {
    const int64_t l = layer_of(names[i].name);
    std::vector<Item> items;
    size_t j = i;
    for (; j < names.size() && layer_of(names[j].name) == l; ++j)
      if (names[j].name.find(".mlp.") == std::string::npos || !sum.moe.is_sparse_layer(l))
        run.add_copy(names[j].name, &items);
    run_items(items, sum.threads);
    if (l >= 0) {
      LayerRecord rec;
      rec.layer = l;
      if (sum.moe.is_sparse_layer(l)) {
        LayerPlan plan;
        rec = run.sparse_layer(l, &plan);
        recorder.add(rec, &plan);
      } else {
        recorder.add(rec, nullptr);
      }
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log_info("upcycle: layer ", l + 1, "/", sum.moe.num_hidden_layers, " done (", dt, " s)");
    }
    i = j;
  }
  queue.drain();
  writer.finish();
  recorder.write(stage.path());
  stage.commit();

  sum.out_dir = stage.out();
  sum.tensors = writer.num_tensors();
  sum.shards = writer.num_shards();
  sum.bytes = writer.total_bytes();
  sum.direct_bytes = writer.direct_bytes();
  sum.expert_elements = run.expert_elements();
  sum.reinit_elements = recorder.reinit_total();
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return sum;
}

}  // namespace moekit::upcycle
