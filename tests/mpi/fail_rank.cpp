// Failure injection for tests/mpi/failure.sh: rank 1 fails while every other rank waits in a
// collective that can only complete with rank 1's participation. The job must end quickly
// with a non-zero exit and a message naming rank 1, never hang.
//   fail_rank throw   rank 1 throws moekit::Error (caught by run_or_abort -> MPI_Abort)
//   fail_rank kill    rank 1 dies from SIGKILL (no handler runs; the launcher must notice)
//   fail_rank hang    rank 1 stops making calls (alive, silent: a lost peer); the watchdog
//                     (2 s inside "step 7") must abort the job and name rank 1
#include <mpi.h>

#include <unistd.h>

#include <csignal>
#include <cstring>
#include <string>

#include "core/check.h"
#include "parallel/bootstrap.h"
#include "parallel/mpi_communicator.h"
#include "parallel/watchdog.h"

int main(int argc, char** argv) {
  moekit::parallel::MpiSession mpi(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "throw";
  return moekit::parallel::run_or_abort([&] {
    auto ctx = moekit::parallel::make_parallel_context(1);
    ctx->world->barrier();
    if (mode == "hang") {
      moekit::parallel::watchdog().configure({2.0, 2.0, 5.0});
      moekit::parallel::watchdog().begin_step(7);
    }
    if (ctx->world->rank() == 1) {
      if (mode == "kill") std::raise(SIGKILL);
      if (mode == "hang")
        for (int i = 0; i < 600; ++i) sleep(1);  // bounded: the test's timeout comes first
      MOEKIT_FAIL("injected failure on rank 1 (", mode, ")");
    }
    // The other ranks block here until they are terminated.
    std::vector<float> v(1024, 1.f);
    for (;;) ctx->world->all_reduce(v.data(), 1024, moekit::parallel::ReduceOp::kSum);
    return 0;
  });
}
