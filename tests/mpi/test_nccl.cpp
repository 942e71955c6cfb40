// The NCCL Communicator on device buffers, against the same hand-computed results as the MPI
// tests. Skips in CPU builds and where there is no GPU per rank; built in CUDA builds so that
// the backend at least compiles and links everywhere.
#include "mpi_gtest.h"

#ifdef MOEKIT_WITH_CUDA
#include <cuda_runtime.h>

#include <vector>

#include "parallel/bootstrap.h"
#include "parallel/nccl_communicator.h"
#endif

namespace moekit {
namespace {

TEST(NcclComm, AllReduceAndAllToAllV) {
#ifndef MOEKIT_WITH_CUDA
  GTEST_SKIP() << "CPU-only build";
#else
  auto& ctx = test::mpi_context();
  if (!test::every_rank_has_a_gpu()) GTEST_SKIP() << "needs one GPU per rank";  // every rank skips together
  const parallel::LaunchInfo li = parallel::detect_launch();
  cudaSetDevice(li.local_rank);
  auto nccl = parallel::make_nccl_communicator(*ctx.world, "nccl-world");
  const int W = nccl->size(), r = nccl->rank();
  std::vector<float> h(8);
  for (int i = 0; i < 8; ++i) h[i] = r * 10 + i;
  float* d = nullptr;
  cudaMalloc(&d, 8 * sizeof(float));
  cudaMemcpy(d, h.data(), 8 * sizeof(float), cudaMemcpyHostToDevice);
  nccl->all_reduce(d, 8, parallel::DataType::kF32, parallel::ReduceOp::kSum);
  cudaMemcpy(h.data(), d, 8 * sizeof(float), cudaMemcpyDeviceToHost);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(h[i], 10.f * W * (W - 1) / 2 + static_cast<float>(W) * i);
  // all_to_all_v: rank r sends r + 1 rows of 2 to every peer (rank 0 one row, ...).
  std::vector<int64_t> sc(W, r + 1), sd(W), rc(W), rd(W);
  int64_t nr = 0;
  for (int p = 0; p < W; ++p) sd[p] = p * (r + 1), rc[p] = p + 1, rd[p] = nr, nr += p + 1;
  std::vector<float> send(W * (r + 1) * 2), recv(nr * 2, -1.f);
  for (size_t i = 0; i < send.size(); ++i) send[i] = r * 100 + static_cast<float>(i / (2 * (r + 1)));
  float *ds = nullptr, *dr = nullptr;
  cudaMalloc(&ds, send.size() * sizeof(float));
  cudaMalloc(&dr, recv.size() * sizeof(float));
  cudaMemcpy(ds, send.data(), send.size() * sizeof(float), cudaMemcpyHostToDevice);
  nccl->all_to_all_v(dr, rc.data(), rd.data(), ds, sc.data(), sd.data(), 2, parallel::DataType::kF32);
  cudaMemcpy(recv.data(), dr, recv.size() * sizeof(float), cudaMemcpyDeviceToHost);
  for (int q = 0; q < W; ++q)
    for (int64_t i = 0; i < rc[q] * 2; ++i) EXPECT_EQ(recv[rd[q] * 2 + i], q * 100 + r) << "from " << q;
  cudaFree(d);
  cudaFree(ds);
  cudaFree(dr);
#endif
}

}  // namespace
}  // namespace moekit
