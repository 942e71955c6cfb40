// ZeRO-1 (Rajbhandari et al., SC'20, stage 1): the optimizer state of a parameter is sharded over
// the ranks that replicate it — dense parameters over all W ranks, expert parameters over their
// edp group — so each rank keeps fp32 masters and AdamW moments for 1/W (resp. 1/edp) of them.
// One step:
//   local gradients --reduce-scatter--> this rank's shard of the summed gradients (x 1/W)
//   norm: sum of squares over the shards, all-reduced over the world (each element once)
//   AdamW on the shard (the trainer builds it over shard_tensors())
//   updated weights --all-gather--> every replica
// Traffic per rank equals a plain all-reduce's (reduce-scatter + all-gather), memory for the
// optimizer state drops by the replication factor.
//
// Shards are whole rows of tensors: the boundaries of a flat arena split into equal parts are
// moved forward to the next row start. Checkpoints can then store each rank's shard as row
// pieces of the HF-named datasets (checkpoint/train_checkpoint.h), which any layout reads back.
// Shards are therefore uneven by up to a row; the collectives take per-rank counts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "parallel/bootstrap.h"
#include "parallel/device_groups.h"
#include "parallel/grad_sync.h"

namespace moekit::parallel {

// A tensor inside a flat arena.
struct ArenaTensor {
  std::string name;
  int64_t offset = 0;  // elements from the arena start
  int64_t numel = 0;
  int64_t rows = 1;    // shape[0] (1-D tensors: their length; scalars: 1)
};

// A row range of one tensor that lies in a rank's shard.
struct ShardSlice {
  size_t tensor = 0;      // index into the arena's tensors
  int64_t row_begin = 0;  // first row
  int64_t rows = 0;
  int64_t offset = 0;     // arena offset of the first element
  int64_t numel = 0;
};

// Boundaries (parts + 1 element offsets, first 0, last the arena size) of `parts` shards of an
// arena holding `tensors` back to back, each boundary at a row start. Tensors must be sorted by
// offset and cover [0, arena_numel).
std::vector<int64_t> row_aligned_bounds(const std::vector<ArenaTensor>& tensors, int64_t arena_numel, int parts);
// The slices of [begin, end) (row-aligned bounds).
std::vector<ShardSlice> shard_slices(const std::vector<ArenaTensor>& tensors, int64_t begin, int64_t end);

class Zero1 {
 public:
  // Dense tensors shard over the world, expert tensors over edp; arenas are `be` memory and
  // their shards move over `groups` (DeviceGroups: MPI on CPUs, NCCL on GPUs).
  Zero1(std::vector<ArenaTensor> dense, int64_t dense_n, std::vector<ArenaTensor> expert, int64_t expert_n,
        const ParallelContext& ctx, backend::Backend& be, const DeviceGroups& groups);

  // This rank's slices, dense then expert (what the optimizer updates and checkpoints store).
  const std::vector<ShardSlice>& dense_slices() const { return dense_slices_; }
  const std::vector<ShardSlice>& expert_slices() const { return expert_slices_; }
  const std::vector<ArenaTensor>& dense_tensors() const { return dense_; }
  const std::vector<ArenaTensor>& expert_tensors() const { return expert_; }
  int64_t dense_shard_numel() const { return dense_count_[ctx_.topo.rank()]; }
  int64_t expert_shard_numel() const { return expert_count_[ctx_.edp->rank()]; }

  // Sums the gradients over the replicas into this rank's shard, in place in the arenas (the
  // elements outside the shard are left as they were and must not be used), and scales them by
  // 1/W: the same values sync_gradients would leave there.
  void reduce_gradients(const GradArenas& g);
  // sqrt of the sum of squares of every shard (each parameter counted once), same on all ranks.
  double grad_norm(const GradArenas& g) const;
  // Every replica receives the shards' updated weights.
  void gather_weights(float* dense_w, float* expert_w);

 private:
  std::vector<ArenaTensor> dense_, expert_;
  const ParallelContext& ctx_;
  backend::Backend& be_;
  const DeviceGroups& groups_;
  std::vector<int64_t> dense_bounds_, expert_bounds_, dense_count_, expert_count_;
  std::vector<ShardSlice> dense_slices_, expert_slices_;
  backend::Buffer scratch_;
};

}  // namespace moekit::parallel
