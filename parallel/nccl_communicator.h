// NCCL backend of the Communicator (CUDA builds only: MOEKIT_WITH_CUDA). Buffers are device
// memory. Every collective is enqueued on the communicator's own stream and waited for before
// returning, which gives the blocking contract of communicator.h; overlapping communication
// with compute is a later change (an event wait instead of the stream wait). The wait polls the
// stream, ncclCommGetAsyncError and the watchdog's deadline (parallel/watchdog.h) instead of
// blocking in cudaStreamSynchronize, so a lost peer or a network error ends the job.
//
// Bootstrap (llm.c's "mpi" method): rank 0 of the bootstrap group calls ncclGetUniqueId, the
// 128-byte id is broadcast over MPI, and every rank calls ncclCommInitRank. The caller picks
// the device first (cudaSetDevice(local_rank), see parallel/bootstrap.h LaunchInfo). Groups
// (ep, edp) are made with ncclCommSplit, mirroring the MPI groups rank for rank.
// abort() calls ncclCommAbort so that no kernel stays blocked, then MPI_Abort; the watchdog's
// thread may call it while the main thread waits.
#pragma once

#ifdef MOEKIT_WITH_CUDA

#include <functional>
#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace moekit::parallel {

// Collective over every rank of `bootstrap` (a host communicator, e.g. MpiCommunicator::world()).
// `before`, when set, runs at the start of every collective that moves data (and of the
// groups split from this one): the device-groups wrapper waits there for the backend's queued
// work, so NCCL, on its own stream, reads finished buffers.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, const std::string& name,
                                                     std::function<void()> before = {});

}  // namespace moekit::parallel

#endif  // MOEKIT_WITH_CUDA
