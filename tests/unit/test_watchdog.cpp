// The collective watchdog (parallel/watchdog.h) without MPI: which deadline applies when (none
// before the first step, parallel.step_timeout inside a step, parallel.timeout between steps,
// both scaled by the longest step), and a collective that never finishes on a backend of one
// process ends the process with exit code 75 and the message naming step, collective and group.
// The MPI path (MPI_Abort, peers named by host) is mpi.failure_hang and mpi.multihost.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace moekit {
namespace {

using parallel::DataType;
using parallel::ReduceOp;
using parallel::watchdog;

// A group of one whose barrier takes `barrier_s` seconds (a peer that does not come).
class SlowCommunicator final : public parallel::Communicator {
 public:
  explicit SlowCommunicator(double barrier_s) : Communicator("slow"), barrier_s_(barrier_s) { members_ = {0}; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int world_rank() const override { return 0; }
  [[noreturn]] void abort(int code, const std::string& message) override { local_.abort(code, message); }

 protected:
  void do_all_reduce(void*, int64_t, DataType, ReduceOp) override {}
  void do_reduce_scatter(void*, const void*, int64_t, DataType, ReduceOp) override {}
  void do_all_gather(void*, const void*, int64_t, DataType) override {}
  void do_reduce_scatter_v(void*, const void*, const int64_t*, DataType, ReduceOp) override {}
  void do_all_gather_v(void*, const void*, const int64_t*, DataType) override {}
  void do_all_to_all(void*, const void*, int64_t, DataType) override {}
  void do_all_to_all_v(void*, const int64_t*, const int64_t*, const void*, const int64_t*, const int64_t*, int64_t,
                       DataType) override {}
  void do_broadcast(void*, int64_t, DataType, int) override {}
  void do_barrier() override { std::this_thread::sleep_for(std::chrono::duration<double>(barrier_s_)); }
  std::unique_ptr<Communicator> do_split(int, int, const std::string&) override { return nullptr; }

 private:
  double barrier_s_;
  parallel::LocalCommunicator local_;
};

TEST(Watchdog, DeadlineByPhaseScaledByTheLongestStep) {
  watchdog().configure({300.0, 40.0, 5.0});
  EXPECT_EQ(watchdog().deadline_s(), 0.0);  // start-up is not timed
  // A step of ~0.2 s: 5 x 0.2 s stays under both floors.
  watchdog().run_step(1, [] { std::this_thread::sleep_for(std::chrono::milliseconds(200)); });
  EXPECT_EQ(watchdog().deadline_s(), 300.0);  // between steps
  watchdog().begin_step(2);
  EXPECT_EQ(watchdog().deadline_s(), 40.0);  // inside a step
  watchdog().end_step();
  // Steps longer than a floor / 5 raise the deadline: floors 0.1 s, a 0.3 s step -> 1.5 s.
  watchdog().configure({0.1, 0.1, 5.0});
  watchdog().run_step(1, [] { std::this_thread::sleep_for(std::chrono::milliseconds(300)); });
  EXPECT_GE(watchdog().deadline_s(), 1.5);
  EXPECT_LT(watchdog().deadline_s(), 2.5);
  watchdog().configure({0.0, 40.0, 5.0});  // off
  watchdog().begin_step(1);
  EXPECT_EQ(watchdog().deadline_s(), 0.0);
  watchdog().stop();
}

TEST(WatchdogDeathTest, ACollectiveThatDoesNotFinishEndsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        SlowCommunicator comm(30);
        watchdog().configure({0.3, 0.3, 5.0});
        watchdog().begin_step(3);
        comm.barrier();
      },
      testing::ExitedWithCode(parallel::kWatchdogExitCode),
      "watchdog: step 3: barrier \\(0 B\\) on group 'slow' \\(rank 0 of 1\\) has not finished after 0\\.[3-9][0-9]* s "
      "\\(inside the step; limit max\\(parallel.step_timeout 0.3 s");
}

TEST(Watchdog, CollectivesThatFinishInTimeAreLeftAlone) {
  SlowCommunicator comm(0.05);
  watchdog().configure({0.5, 0.5, 5.0});
  for (int64_t s = 1; s <= 5; ++s) watchdog().run_step(s, [&] { comm.barrier(); });
  comm.barrier();  // between steps
  EXPECT_FALSE(watchdog().overdue());
  watchdog().stop();
}

}  // namespace
}  // namespace moekit
