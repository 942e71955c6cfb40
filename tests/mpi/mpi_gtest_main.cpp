// main() for the MPI tests (see mpi_gtest.h).
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "mpi_gtest.h"
#include "core/device.h"
#include "parallel/mpi_communicator.h"

namespace moekit::test {
namespace {
std::unique_ptr<parallel::ParallelContext> g_ctx;
int g_ep = 1;

// Prints failed assertions of a non-zero rank, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
    std::fflush(stderr);
  }

 private:
  int rank_;
};
}  // namespace

parallel::ParallelContext& mpi_context() { return *g_ctx; }
int mpi_ep_arg() { return g_ep; }

bool every_rank_has_a_gpu() {
  const int mine = cuda_device_count() > parallel::detect_launch().local_rank ? 1 : 0;
  return g_ctx->world->all_reduce_value<int32_t>(mine) == g_ctx->world->size();
}

}  // namespace moekit::test

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i)
    if (!std::strncmp(argv[i], "--ep=", 5)) moekit::test::g_ep = std::atoi(argv[i] + 5);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new moekit::test::RankFailurePrinter(rank));
  }
  int rc = 0;
  {
    moekit::test::g_ctx = moekit::parallel::make_parallel_context(moekit::parallel::MpiCommunicator::world(),
                                                                  moekit::test::g_ep);
    rc = RUN_ALL_TESTS();
    moekit::test::g_ctx.reset();
  }
  int any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
