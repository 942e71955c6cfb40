// Tests of the layer-loading pieces of upcycle/expert_fill: the packing of the dense down into
// panels and the tile gather against plain index arithmetic, on the AVX-512 path and the scalar
// one, for shapes that are and are not multiples of the 16x16 tile, and for any row range; and
// the statistics computed in pieces against the whole-tensor ones.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/check.h"
#include "upcycle/expert_fill.h"
#include "upcycle/rng_stream.h"

namespace moekit::upcycle {
namespace {

struct ScalarKernels {
  explicit ScalarKernels(bool on) : prev(set_scalar_kernels(on)) {}
  ~ScalarKernels() { set_scalar_kernels(prev); }
  bool prev;
};

std::vector<float> iota_matrix(int64_t rows, int64_t cols) {
  std::vector<float> m(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(i) + 0.5f;  // each value names its place
  return m;
}

// Packs the (hidden, dense) matrix in uneven runs of panels, as the upcycler's items do.
std::vector<float> packed(const std::vector<float>& down, int64_t hidden, int64_t dense) {
  const int64_t panels = (hidden + kDownPanel - 1) / kDownPanel;
  std::vector<float> p(static_cast<size_t>(panels * kDownPanel * dense), -1.f);
  const int64_t a = panels / 3, b = panels - panels / 4;
  pack_down_panels(down.data(), hidden, dense, 0, a, p.data());
  pack_down_panels(down.data(), hidden, dense, a, b, p.data());
  pack_down_panels(down.data(), hidden, dense, b, panels, p.data());
  return p;
}

TEST(UpcycleGather, PanelsHoldSixteenRowsOfEachColumn) {
  for (bool scalar : {false, true}) {
    ScalarKernels k(scalar);
    for (auto [hidden, dense] : {std::pair<int64_t, int64_t>{32, 48}, {37, 21}, {1, 5}, {16, 1}, {64, 5504 / 8}}) {
      const std::vector<float> down = iota_matrix(hidden, dense);
      const std::vector<float> p = packed(down, hidden, dense);
      const int64_t panels = (hidden + kDownPanel - 1) / kDownPanel;
      for (int64_t g = 0; g < panels; ++g)
        for (int64_t j = 0; j < dense; ++j)
          for (int64_t r = 0; r < kDownPanel; ++r) {
            const int64_t h = g * kDownPanel + r;
            ASSERT_EQ(p[static_cast<size_t>((g * dense + j) * kDownPanel + r)],
                      h < hidden ? down[static_cast<size_t>(h * dense + j)] : 0.f)
                << hidden << "x" << dense << " h " << h << " j " << j << " scalar " << scalar;
          }
    }
    std::vector<float> m(40), t(64);
    EXPECT_THROW(pack_down_panels(m.data(), 20, 2, 1, 3, t.data()), Error);  // 20 rows are 2 panels
  }
}

TEST(UpcycleGather, DownRowsTakeTheNamedDenseColumns) {
  std::mt19937 rng(5);
  for (bool scalar : {false, true}) {
    ScalarKernels k(scalar);
    for (auto [hidden, dense, width] : {std::tuple<int64_t, int64_t, int64_t>{64, 80, 32}, {37, 23, 21},
                                        {2048 / 16, 5504 / 16, 1408 / 16 + 3}, {16, 7, 1}}) {
      const std::vector<float> down = iota_matrix(hidden, dense);
      const std::vector<float> p = packed(down, hidden, dense);
      std::vector<int32_t> src(static_cast<size_t>(width));
      for (auto& x : src) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(dense));  // repeats allowed
      for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, hidden}, {3, std::min<int64_t>(hidden, 19)},
                            {hidden - 1, hidden}, {5, 5}, {16, std::min<int64_t>(hidden, 32)}}) {
        std::vector<float> out(static_cast<size_t>((r1 - r0) * width) + 7, -1.f);
        gather_down_rows(out.data(), src.data(), width, p.data(), dense, hidden, r0, r1);
        for (int64_t h = r0; h < r1; ++h)
          for (int64_t j = 0; j < width; ++j)
            ASSERT_EQ(out[static_cast<size_t>((h - r0) * width + j)],
                      down[static_cast<size_t>(h * dense + src[static_cast<size_t>(j)])])
                << "hidden " << hidden << " width " << width << " rows [" << r0 << ", " << r1 << ") h " << h
                << " j " << j << " scalar " << scalar;
        for (size_t i = static_cast<size_t>((r1 - r0) * width); i < out.size(); ++i) ASSERT_EQ(out[i], -1.f);
      }
      std::vector<float> out(static_cast<size_t>(width));
      EXPECT_THROW(gather_down_rows(out.data(), src.data(), width, p.data(), dense, hidden, 0, hidden + 1), Error);
    }
  }
}

// The upcycler reads each dense tensor in pieces on all threads; the stats (which set the
// re-init distribution) must not depend on the split.
TEST(UpcycleGather, StatsInPiecesEqualWholeTensorStats) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.3f, 0.02f);
  for (int64_t n : {int64_t{1}, int64_t{4095}, int64_t{4096}, int64_t{3 * 4096 + 17}, int64_t{100000}}) {
    std::vector<float> x(static_cast<size_t>(n));
    double sum = 0, sq = 0;
    for (auto& v : x) {
      v = nd(rng);
      sum += v;
      sq += static_cast<double>(v) * v;
    }
    const TensorStats whole = tensor_stats(x.data(), n);
    const int64_t blocks = (n + kStatsBlock - 1) / kStatsBlock;
    std::vector<double> s(static_cast<size_t>(blocks)), q(static_cast<size_t>(blocks));
    for (int64_t b = blocks; b > 0; b -= 2) block_sums(x.data(), n, std::max<int64_t>(0, b - 2), b, s.data(), q.data());
    const TensorStats pieces = stats_of_blocks(s.data(), q.data(), n);
    EXPECT_EQ(whole.mean, pieces.mean) << n;
    EXPECT_EQ(whole.std, pieces.std) << n;
    const double mean = sum / n;
    EXPECT_NEAR(whole.mean, mean, 1e-12) << n;
    EXPECT_NEAR(whole.std, std::sqrt(std::max(0.0, sq / n - mean * mean)), 1e-9) << n;
  }
  EXPECT_EQ(tensor_stats(nullptr, 0).mean, 0.0);
}

}  // namespace
}  // namespace moekit::upcycle
