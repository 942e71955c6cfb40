// Process bootstrap: who launched us (mpirun, srun, nothing), MPI start-up and shutdown, and
// the ParallelContext every distributed component receives: the Topology plus the three
// groups (world, ep, edp) as Communicators.
//
// Rank resolution follows reference/reliability-ecosystem.md: MPI itself once initialised;
// before that the launcher's variables (OMPI_COMM_WORLD_*, PMIX_RANK, PMI_*, SLURM_*). A
// process started without a launcher runs single-process on LocalCommunicators and never
// touches MPI (Open MPI's singleton start-up is slow and fails in some containers).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/topology.h"

namespace moekit::parallel {

// What the environment says about this process, before MPI_Init.
struct LaunchInfo {
  std::string launcher = "none";  // "mpirun" (Open MPI), "pmix", "pmi", "srun", "none"
  int rank = 0, world = 1;
  int local_rank = 0, local_world = 1;
  bool under_launcher() const { return launcher != "none"; }
};
LaunchInfo detect_launch();

// Initialises MPI (MPI_THREAD_FUNNELED: OpenMP threads compute, the main thread communicates)
// when detect_launch() sees a launcher or MOEKIT_FORCE_MPI=1 is set; finalises on
// destruction. One per process (MPI cannot be re-initialised).
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  bool active() const { return active_; }

 private:
  bool active_ = false;
};

// Every group a distributed component may need. Owned by the entry point; model, MoE and
// trainer code take references or pointers to it, never a global.
struct ParallelContext {
  Topology topo;
  std::unique_ptr<Communicator> world;  // all W ranks: dense gradients, batch statistics
  std::unique_ptr<Communicator> ep;     // this rank's expert-parallel group: token all-to-all
  std::unique_ptr<Communicator> edp;    // this rank's expert-data-parallel group: expert grads

  ParallelContext(Topology t, std::unique_ptr<Communicator> w, std::unique_ptr<Communicator> e,
                  std::unique_ptr<Communicator> d);
  bool distributed() const { return topo.world() > 1; }
};

// Groups over `world`: ep groups are consecutive ranks, edp groups every ep-th rank (see
// topology.h). Every rank of `world` must call it (MPI_Comm_split inside).
std::unique_ptr<ParallelContext> make_parallel_context(std::unique_ptr<Communicator> world, int ep);
// Over MPI_COMM_WORLD when MPI is initialised, otherwise a single-process context.
std::unique_ptr<ParallelContext> make_parallel_context(int ep);

// Runs fn(); on an exception in a job of several ranks prints it with the rank and aborts the
// whole job (MPI_Abort), so that no other rank waits forever in a collective. In a single
// process the exception propagates (main() prints it and exits 1). Returns fn's exit code.
int run_or_abort(const std::function<int()>& fn);

}  // namespace moekit::parallel
