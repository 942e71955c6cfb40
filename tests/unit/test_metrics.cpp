// Expert-load statistics and duration formatting (parameter and FLOP counts: test_cost.cpp).
#include <gtest/gtest.h>

#include "train/metrics.h"

namespace moekit {
namespace {

TEST(Metrics, ExpertLoad) {
  train::ExpertLoad l{0, {10, 0, 30, 0}};
  EXPECT_DOUBLE_EQ(l.max_over_mean(), 3.0);
  EXPECT_EQ(l.dead(), 2);
  EXPECT_DOUBLE_EQ(l.fractions()[2], 0.75);
  EXPECT_EQ(train::format_duration(3725), "1h02m");
  EXPECT_EQ(train::format_duration(65), "1m05s");
}

}  // namespace
}  // namespace moekit
