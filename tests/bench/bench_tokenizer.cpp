// Tokenizer throughput: moekit's encoder on a corpus held in memory, with 1..T threads (each
// its own TokenEncoder, documents handed out dynamically), best of --repeat runs, as wall time
// and as process CPU time (tokens per CPU-second: what a core does, even on a machine whose
// cores other work shares). The peers
// (tiktoken, HF tokenizers) are timed on the same corpus by bench_tokenizer_peers.py;
// run_tokenizer_bench.sh runs both and prints the table of docs/PERF.md.
//   bench_tokenizer --tokenizer PATH --corpus corpus.jsonl [--threads 1,2] [--repeat 3] [--json]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include <time.h>

#include <CLI/CLI.hpp>

#include "data/tokenizer.h"

using moekit::data::TokenEncoder;
using moekit::data::Tokenizer;

static double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  std::string tokenizer, corpus, threads_list = "1,2";
  int repeat = 3;
  bool as_json = false;
  CLI::App app{"moekit tokenizer throughput"};
  app.add_option("--tokenizer", tokenizer, "Tokenizer file or directory")->required();
  app.add_option("--corpus", corpus, "JSON lines with a \"text\" field")->required();
  app.add_option("--threads", threads_list, "Thread counts to time, comma separated");
  app.add_option("--repeat", repeat, "Runs per thread count (the best is reported)");
  app.add_flag("--json", as_json, "One JSON line per thread count");
  CLI11_PARSE(app, argc, argv);
  try {
    const auto t0 = std::chrono::steady_clock::now();
    const auto tok = Tokenizer::load(tokenizer);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<std::string> docs;
    size_t bytes = 0;
    std::ifstream in(corpus);
    for (std::string line; std::getline(in, line);) {
      docs.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
      bytes += docs.back().size();
    }
    if (!as_json)
      std::printf("%s: %s, %lld ids, loaded in %.2f s; corpus %zu documents, %.2f MB\n", tokenizer.c_str(),
                  moekit::data::tokenizer_format_name(tok->format()), static_cast<long long>(tok->num_ids()), load_s,
                  docs.size(), bytes / 1e6);
    size_t pos = 0;
    while (pos < threads_list.size()) {
      size_t end = threads_list.find(',', pos);
      if (end == std::string::npos) end = threads_list.size();
      const int threads = std::stoi(threads_list.substr(pos, end - pos));
      pos = end + 1;
      double best = 1e30, best_cpu = 1e30;
      size_t tokens = 0;
      for (int r = 0; r < repeat; ++r) {
        std::atomic<size_t> next{0}, total{0};
        const auto s = std::chrono::steady_clock::now();
        const double c0 = cpu_seconds();
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&] {
            TokenEncoder enc(*tok);
            std::vector<int32_t> ids;
            size_t n = 0;
            for (size_t d; (d = next.fetch_add(1)) < docs.size();) {
              ids.clear();
              enc.encode(docs[d], &ids);
              n += ids.size();
            }
            total += n;
          });
        }
        for (auto& th : pool) th.join();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
        best_cpu = std::min(best_cpu, cpu_seconds() - c0);
        tokens = total;
      }
      const double tps = tokens / best;
      if (as_json) {
        std::printf("%s\n", nlohmann::json({{"impl", "moekit"},
                                            {"threads", threads},
                                            {"tokens", tokens},
                                            {"bytes", bytes},
                                            {"seconds", best},
                                            {"cpu_seconds", best_cpu},
                                            {"tokens_per_s", tps},
                                            {"load_s", load_s}})
                                .dump()
                                .c_str());
      } else {
        std::printf("threads %d: %zu tokens in %.3f s (%.3f CPU s): %.2f M tokens/s (%.2f M per thread), "
                    "%.2f M tokens per CPU-second, %.1f MB/s\n",
                    threads, tokens, best, best_cpu, tps / 1e6, tps / 1e6 / threads, tokens / best_cpu / 1e6,
                    bytes / best / 1e6);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
