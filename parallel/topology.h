// Topology: how the W ranks of a job are laid out for expert parallelism (DESIGN.md section 6).
//
//   W = ep x edp. Every rank is a data-parallel rank for the dense model (dense parameters are
//   replicated on all W ranks and every rank reads its own slice of the global batch: Megatron's
//   "parallel folding" of EP into DP). For the experts the ranks form a grid:
//     ep_rank  = rank % ep   position inside an expert-parallel group (which experts it holds)
//     edp_rank = rank / ep   which replica of those experts it is
//   so an EP group is `ep` consecutive ranks (on one node when ranks are packed by node, which
//   is where the all-to-all wants them) and an EDP group is every ep-th rank.
//   Experts are split contiguously: ep_rank p owns [p * E/ep, (p+1) * E/ep).
//
// Topology is plain arithmetic with no MPI in it, so unit tests and config validation use it
// without a launcher.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moekit::parallel {

// Every divisibility rule of a layout; an error message names each factor involved.
struct LayoutRequest {
  int world = 1;
  int ep = 1;
  int64_t num_experts = 0;        // 0: dense model (ep must then be 1)
  int64_t global_batch = 0;       // sequences per optimizer step over all ranks; 0: not checked
  int64_t micro_batch = 0;        // sequences per forward on one rank; 0: not checked
  bool zero1 = false;             // ZeRO-1 asks for nothing extra (uneven shards are allowed)
};

// Throws moekit::Error listing every violated rule with its numbers, e.g.
// "num_experts 60 is not divisible by ep 8 (60 % 8 = 4)".
void validate_layout(const LayoutRequest& r);

class Topology {
 public:
  // Validates world > 0, 0 <= rank < world, ep >= 1 and world % ep == 0.
  Topology(int world, int rank, int ep);

  int world() const { return world_; }
  int rank() const { return rank_; }
  int ep() const { return ep_; }
  int edp() const { return world_ / ep_; }
  int ep_rank() const { return rank_ % ep_; }
  int edp_rank() const { return rank_ / ep_; }
  // Data parallelism of the dense model and of the batch: every rank.
  int dp() const { return world_; }
  int dp_rank() const { return rank_; }

  // Global rank at grid position (ep_rank, edp_rank).
  int rank_at(int ep_rank, int edp_rank) const { return edp_rank * ep_ + ep_rank; }
  // Members of this rank's groups, ascending (the order MPI_Comm_split keys them in).
  std::vector<int> ep_group() const;
  std::vector<int> edp_group() const;

  // Experts: E must be divisible by ep (checked).
  int64_t local_experts(int64_t num_experts) const;
  int64_t first_expert(int64_t num_experts) const { return ep_rank() * local_experts(num_experts); }
  bool owns_expert(int64_t expert, int64_t num_experts) const;
  int expert_owner_ep_rank(int64_t expert, int64_t num_experts) const;

  // "rank 3 of 4 (ep_rank 1 of 2, edp_rank 1 of 2)", for logs and error messages.
  std::string describe() const;

 private:
  int world_, rank_, ep_;
};

}  // namespace moekit::parallel
