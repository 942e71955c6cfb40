#include "parallel/bootstrap.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <vector>

#include "core/check.h"
#include "core/log.h"
#include "parallel/mpi_communicator.h"
#include "parallel/watchdog.h"

namespace moekit::parallel {

namespace {

bool env_int(const char* name, int* out) {
  const char* v = std::getenv(name);
  if (!v || !*v) return false;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0') return false;
  *out = static_cast<int>(x);
  return true;
}

}  // namespace

namespace {

LaunchInfo detect_launch_from_env() {
  LaunchInfo li;
  // Open MPI's mpirun (and its PMIx direct launch) first, then generic PMI, then Slurm.
  if (env_int("OMPI_COMM_WORLD_RANK", &li.rank) && env_int("OMPI_COMM_WORLD_SIZE", &li.world)) {
    li.launcher = "mpirun";
    env_int("OMPI_COMM_WORLD_LOCAL_RANK", &li.local_rank);
    env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &li.local_world);
    return li;
  }
  if (env_int("PMIX_RANK", &li.rank)) {
    li.launcher = "pmix";
    if (!env_int("SLURM_NTASKS", &li.world)) li.world = -1;  // MPI will tell
    env_int("SLURM_LOCALID", &li.local_rank);
    return li;
  }
  if (env_int("PMI_RANK", &li.rank) && env_int("PMI_SIZE", &li.world)) {
    li.launcher = "pmi";
    env_int("MPI_LOCALRANKID", &li.local_rank);
    env_int("MPI_LOCALNRANKS", &li.local_world);
    return li;
  }
  if (env_int("SLURM_PROCID", &li.rank) && env_int("SLURM_NTASKS", &li.world) && std::getenv("SLURM_STEP_ID")) {
    li.launcher = "srun";
    env_int("SLURM_LOCALID", &li.local_rank);
    return li;
  }
  return li;
}

}  // namespace

// Read once, before MPI_Init: MPI's own start-up (a singleton's PMIx server) sets variables of
// its own that would otherwise be mistaken for a launcher.
LaunchInfo detect_launch() {
  static const LaunchInfo li = detect_launch_from_env();
  return li;
}

MpiSession::MpiSession(int* argc, char*** argv) {
  const char* force = std::getenv("MOEKIT_FORCE_MPI");
  const bool want = detect_launch().under_launcher() || (force && std::string(force) == "1");
  int init = 0;
  MPI_Initialized(&init);
  if (!want || init) return;
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  active_ = true;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  log_set_rank(rank, size);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (active_ && !finalized) MPI_Finalize();
}

ParallelContext::ParallelContext(Topology t, std::unique_ptr<Communicator> w, std::unique_ptr<Communicator> e,
                                 std::unique_ptr<Communicator> d)
    : topo(t), world(std::move(w)), ep(std::move(e)), edp(std::move(d)) {}

std::unique_ptr<ParallelContext> make_parallel_context(std::unique_ptr<Communicator> world, int ep) {
  MOEKIT_CHECK(world, "make_parallel_context: no world communicator");
  Topology topo(world->size(), world->rank(), ep);
  // Color = the coordinate shared by the group, key = the position inside it, so group rank
  // equals ep_rank (resp. edp_rank).
  auto ep_comm = world->split(topo.edp_rank(), topo.ep_rank(), "ep");
  auto edp_comm = world->split(topo.ep_rank(), topo.edp_rank(), "edp");
  MOEKIT_CHECK(ep_comm->size() == topo.ep() && ep_comm->rank() == topo.ep_rank(), "ep group of ", topo.describe(),
               " has size ", ep_comm->size(), " and rank ", ep_comm->rank());
  MOEKIT_CHECK(edp_comm->size() == topo.edp() && edp_comm->rank() == topo.edp_rank(), "edp group of ",
               topo.describe(), " has size ", edp_comm->size(), " and rank ", edp_comm->rank());
  // Every rank's host, so that the watchdog can say where the peers it waits for run.
  constexpr int kHost = 64;
  char host[kHost] = {};
  gethostname(host, kHost - 1);
  std::vector<uint8_t> hosts(static_cast<size_t>(kHost) * world->size());
  world->all_gather(hosts.data(), reinterpret_cast<const uint8_t*>(host), kHost);
  std::vector<std::string> names(world->size());
  for (int r = 0; r < world->size(); ++r)
    names[r].assign(reinterpret_cast<const char*>(hosts.data()) + static_cast<size_t>(r) * kHost);
  watchdog().set_hosts(std::move(names));
  return std::make_unique<ParallelContext>(topo, std::move(world), std::move(ep_comm), std::move(edp_comm));
}

std::unique_ptr<ParallelContext> make_parallel_context(int ep) {
  int init = 0, finalized = 0, size = 1;
  MPI_Initialized(&init);
  MPI_Finalized(&finalized);
  if (init && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
  // A launcher that started N tasks which each see a world of one (srun without a PMI plugin
  // matching the MPI library) would run N independent trainings into the same run directory.
  const LaunchInfo li = detect_launch();
  MOEKIT_CHECK(li.world <= 1 || size == li.world, "the launcher (", li.launcher, ") started this process as rank ",
               li.rank, " of ", li.world, " but MPI sees a world of ", size,
               "; with srun pass --mpi=pmix (see `srun --mpi=list`), or run mpirun inside the allocation");
  if (init && !finalized) return make_parallel_context(MpiCommunicator::world(), ep);
  return make_parallel_context(std::make_unique<LocalCommunicator>("world"), ep);
}

int run_or_abort(const std::function<int()>& fn) {
  std::string what;
  try {
    return fn();
  } catch (const std::exception& e) {
    int init = 0, finalized = 0, size = 1;
    MPI_Initialized(&init);
    MPI_Finalized(&finalized);
    if (init && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size == 1) throw;  // one process: main() reports it as usual
    what = e.what();
  }
  abort_job(1, what);
}

}  // namespace moekit::parallel
