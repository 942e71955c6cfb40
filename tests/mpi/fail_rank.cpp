// Failure injection for tests/mpi/failure.sh: rank 1 fails while every other rank waits in a
// collective that can only complete with rank 1's participation. The job must end quickly
// with a non-zero exit and a message naming rank 1, never hang.
//   fail_rank throw   rank 1 throws moekit::Error (caught by run_or_abort -> MPI_Abort)
//   fail_rank kill    rank 1 dies from SIGKILL (no handler runs; the launcher must notice)
#include <mpi.h>

#include <csignal>
#include <cstring>
#include <string>

#include "core/check.h"
#include "parallel/bootstrap.h"
#include "parallel/mpi_communicator.h"

int main(int argc, char** argv) {
  moekit::parallel::MpiSession mpi(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "throw";
  return moekit::parallel::run_or_abort([&] {
    auto ctx = moekit::parallel::make_parallel_context(1);
    ctx->world->barrier();
    if (ctx->world->rank() == 1) {
      if (mode == "kill") std::raise(SIGKILL);
      MOEKIT_FAIL("injected failure on rank 1 (", mode, ")");
    }
    // The other ranks block here until they are terminated.
    std::vector<float> v(1024, 1.f);
    for (;;) ctx->world->all_reduce(v.data(), 1024, moekit::parallel::ReduceOp::kSum);
    return 0;
  });
}
