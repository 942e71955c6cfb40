// bench_upcycle: helpers for tests/bench/bench_upcycle.sh.
//   bench_upcycle make-dense --config MODEL.yaml --out DIR [--seed S] [--dtype bf16] [--threads N]
//       a random dense checkpoint with the config's exact shapes (weights N(0, initializer_range),
//       biases 0, norms 1), streamed straight into its shards with ShardWriter, so a 3.7 GB
//       Qwen-1.8B-shaped checkpoint costs a few MB of memory. Nothing is downloaded.
//   bench_upcycle kernels [--cap avx2|scalar]
//       CPU-time cost per element of the upcycle's inner kernels (Philox words, element-mode
//       re-init at ratio 0.5, full normals, the down-projection gather with Qwen-1.8B's shapes,
//       f32 -> bf16), on this core. --cap times the kernels a CPU without AVX-512 (avx2) or
//       without AVX2 (scalar) runs.
#include <omp.h>
#include <time.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/shard_writer.h"
#include "config/model_config.h"
#include "core/check.h"
#include "core/dtype.h"
#include "model/model.h"
#include "upcycle/expert_fill.h"
#include "upcycle/rng_stream.h"

namespace {

using namespace moekit;

double cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

std::string arg(int argc, char** argv, const std::string& key, const std::string& def) {
  for (int i = 2; i + 1 < argc; ++i)
    if (key == argv[i]) return argv[i + 1];
  return def;
}

int make_dense(int argc, char** argv) {
  const std::string cfg_path = arg(argc, argv, "--config", ""), out = arg(argc, argv, "--out", "");
  MOEKIT_CHECK(!cfg_path.empty() && !out.empty(), "make-dense needs --config and --out");
  const uint64_t seed = std::stoull(arg(argc, argv, "--seed", "1"));
  const DType dt = dtype_parse(arg(argc, argv, "--dtype", "bf16"));
  const int threads = std::stoi(arg(argc, argv, "--threads", "2"));
  const config::ModelConfig cfg = config::load_model_config(cfg_path);
  MOEKIT_CHECK(!std::filesystem::exists(out), out, " already exists");
  std::filesystem::create_directories(out);
  model::ParamStore specs;
  model::declare_model_params(cfg, &specs);
  std::vector<checkpoint::ShardEntry> entries;
  for (const auto& s : specs.specs()) entries.push_back({s.name, dt, s.shape});
  checkpoint::ShardWriter w(out, entries);
  constexpr int64_t kPiece = int64_t{1} << 20;
  struct Piece {
    size_t t;
    int64_t e0, n;
  };
  std::vector<Piece> pieces;
  for (size_t t = 0; t < specs.specs().size(); ++t)
    for (int64_t e0 = 0; e0 < specs.specs()[t].numel(); e0 += kPiece)
      pieces.push_back({t, e0, std::min(kPiece, specs.specs()[t].numel() - e0)});
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> v(kPiece);
    std::vector<uint8_t> b(kPiece * 4);
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      const model::ParamSpec& s = specs.specs()[p.t];
      if (s.init == model::ParamInit::kNormal)
        upcycle::normal_elements(v.data(), static_cast<size_t>(p.n), upcycle::philox_key(seed, s.name),
                                 static_cast<uint64_t>(p.e0), 0.f, static_cast<float>(cfg.initializer_range));
      else
        std::fill(v.begin(), v.begin() + p.n, s.init == model::ParamInit::kOne ? 1.f : 0.f);
      from_f32(b.data(), dt, v.data(), static_cast<size_t>(p.n));
      w.write(p.t, static_cast<uint64_t>(p.e0) * dtype_size(dt), b.data(), static_cast<size_t>(p.n) * dtype_size(dt));
    }
  }
  w.finish();
  config::ModelConfig c = cfg;
  c.torch_dtype = dt == DType::kBF16 ? "bfloat16" : dt == DType::kF16 ? "float16" : "float32";
  FILE* f = std::fopen((out + "/config.json").c_str(), "w");
  MOEKIT_CHECK(f != nullptr, out, "/config.json: cannot write");
  const std::string j = config::model_config_to_hf_json(c);
  std::fwrite(j.data(), 1, j.size(), f);
  std::fclose(f);
  std::printf("{\"out\": \"%s\", \"bytes\": %llu, \"tensors\": %zu}\n", out.c_str(),
              static_cast<unsigned long long>(w.total_bytes()), w.num_tensors());
  return 0;
}

int run_kernels(const std::string& cap) {
  MOEKIT_CHECK(cap.empty() || cap == "avx2" || cap == "scalar", "--cap: expected avx2 or scalar, got '", cap, "'");
  upcycle::set_kernel_cap(cap == "avx2"     ? upcycle::KernelCap::kAvx2
                          : cap == "scalar" ? upcycle::KernelCap::kScalar
                                            : upcycle::KernelCap::kAvx512);
  const size_t n = size_t{1} << 24, blk = 4096;
  std::vector<float> src(2 * blk, 0.5f), y(blk);
  std::vector<uint32_t> words(blk);
  std::vector<uint16_t> half(blk);
  const upcycle::PhiloxKey key = upcycle::philox_key(1, "bench");
  double t0 = cpu_ns();
  for (size_t off = 0; off < n; off += blk) upcycle::stream_words(key, off, blk, words.data());
  const double philox = (cpu_ns() - t0) / n;
  t0 = cpu_ns();
  uint64_t c = 0;
  for (size_t off = 0; off < n; off += blk)
    c += upcycle::reinit_elements(y.data(), src.data() + (off / blk % 2) * blk, blk, key, off, uint64_t{1} << 31, 0.f, 1.f);
  const double reinit = (cpu_ns() - t0) / n;
  t0 = cpu_ns();
  for (size_t off = 0; off < n; off += blk) upcycle::normal_elements(y.data(), blk, key, off, 0.f, 1.f);
  const double normal = (cpu_ns() - t0) / n;
  // Down gather: 32 hidden rows (two panels) of a 1408-neuron expert from a 5504-wide dense FFN.
  const int64_t dense = 5504, width = 1408, rows = 32;
  std::vector<float> panels(static_cast<size_t>(rows * dense), 1.f), out(static_cast<size_t>(rows * width));
  std::vector<int32_t> idx(static_cast<size_t>(width));
  for (int64_t j = 0; j < width; ++j) idx[static_cast<size_t>(j)] = static_cast<int32_t>((j * 2731) % dense);
  t0 = cpu_ns();
  for (size_t done = 0; done < n; done += static_cast<size_t>(rows * width))
    upcycle::gather_down_rows(out.data(), idx.data(), width, panels.data(), dense, rows, 0, rows);
  const double gather = (cpu_ns() - t0) / n;
  t0 = cpu_ns();
  for (size_t off = 0; off < n; off += blk) from_f32(half.data(), DType::kBF16, src.data(), blk);
  const double bf16 = (cpu_ns() - t0) / n;
  std::printf(
      "{\"kernels\": \"%s\", \"ns_per_word_philox\": %.3f, "
      "\"ns_per_elem_reinit_0.5\": %.3f, \"ns_per_elem_normal\": %.3f, \"ns_per_elem_down_gather\": %.3f, "
      "\"ns_per_elem_bf16\": %.3f, \"check\": %llu}\n",
      upcycle::kernel_level_name(), philox, reinit, normal, gather, bf16,
      static_cast<unsigned long long>(c));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "make-dense") return make_dense(argc, argv);
    if (cmd == "kernels") return run_kernels(arg(argc, argv, "--cap", ""));
    std::fprintf(stderr, "usage: bench_upcycle make-dense --config CFG --out DIR [--seed S] [--dtype bf16] [--threads N]\n"
                         "       bench_upcycle kernels [--cap avx2|scalar]\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_upcycle: error: %s\n", e.what());
    return 1;
  }
}
