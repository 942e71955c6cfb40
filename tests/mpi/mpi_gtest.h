// GoogleTest under mpirun: every rank runs every test (tests are SPMD and call collectives);
// rank 0 prints the usual report, other ranks print only their failures, tagged with the rank;
// the process exit code is the maximum over ranks, so a failure on any rank fails the ctest.
// Tests must not ASSERT_* between collectives (an early return on one rank would leave the
// others waiting): use EXPECT_* and check results after the collective calls.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "parallel/bootstrap.h"

namespace moekit::test {

// The world context of this process, made by main() with ep from --ep=N (default 1).
parallel::ParallelContext& mpi_context();
int mpi_ep_arg();
// True on every rank when every rank has a CUDA device of its own (device local_rank exists),
// false on every rank otherwise: GPU tests skip together (NCCL refuses two ranks per device).
bool every_rank_has_a_gpu();

}  // namespace moekit::test
