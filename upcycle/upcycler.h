// upcycle(): dense Qwen checkpoint + recipe -> Qwen2-MoE HF checkpoint, streamed layer by
// layer. The output tensor list is known before any data exists, so the sharded safetensors
// files are laid out and reserved up front (checkpoint/shard_writer.h) and every slab is
// written in place once it is computed, by I/O threads (write_queue.h), with O_DIRECT where
// aligned (the page cache's copy and writeback cost more CPU than the conversion on small
// machines); peak memory is one layer's dense FFN in f32 plus a bounded pool of write buffers,
// never the model. Everything is built in a
// staging directory that is renamed into place at the end (staging_dir.h).
#pragma once

#include <cstdint>
#include <string>

#include "config/model_config.h"
#include "upcycle/plan.h"
#include "upcycle/recipe.h"

namespace moekit::upcycle {

struct UpcycleOptions {
  std::string dense_dir, out_dir;
  bool overwrite = false;
  int threads = 0;     // compute threads; 0: one per core
  int io_threads = 0;  // threads writing the finished slabs; 0: 16
};

struct UpcycleSummary {
  std::string out_dir;
  Recipe recipe;               // resolved
  config::ModelConfig moe;     // the output architecture
  Geometry geometry;
  Scales scales;
  size_t tensors = 0, shards = 0;
  uint64_t bytes = 0;          // tensor bytes written (index total_size)
  uint64_t direct_bytes = 0;   // of which written with O_DIRECT
  uint64_t expert_elements = 0, reinit_elements = 0;
  int threads = 1, io_threads = 1;
  double seconds = 0;
};

UpcycleSummary upcycle(Recipe recipe, const UpcycleOptions& opt);

}  // namespace moekit::upcycle
