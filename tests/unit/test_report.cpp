// moekit report: cost-to-target on hand-made run directories (every expected number is worked
// out by hand from the rows written here), the default target, and errors on bad runs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "train/report.h"

namespace moekit::train {
namespace {

namespace fs = std::filesystem;

// A run whose step s has tokens 100 s, FLOPs 1e6 s, wall 2 s and the given losses.
std::string make_run(const std::string& name, const std::vector<double>& losses,
                     const std::vector<std::pair<int, double>>& evals) {
  const fs::path d = fs::temp_directory_path() / ("moekit_report_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  std::ofstream m(d / "metrics.jsonl");
  for (size_t i = 0; i < losses.size(); ++i) {
    const int s = static_cast<int>(i) + 1;
    m << "{\"step\":" << s << ",\"tokens\":" << 100 * s << ",\"flops\":" << 1e6 * s << ",\"wall_seconds\":" << 2 * s
      << ",\"loss\":" << losses[i] << "}\n";
  }
  std::ofstream e(d / "eval.jsonl");
  for (auto [s, l] : evals) e << "{\"step\":" << s << ",\"loss\":" << l << "}\n";
  std::ofstream(d / "summary.json") << "{\"model_type\":\"qwen2\",\"params_total\":1000,\"params_active\":500,"
                                       "\"train_flops_per_token\":1e4,\"wall_seconds\":"
                                    << 2 * losses.size() << ",\"world\":2}";
  return d.string();
}

TEST(Report, CostToTargetUsesFirstEvalAtOrBelow) {
  const RunRecord r = load_run(make_run("a", {5, 4, 3, 2, 1, 1}, {{2, 4.5}, {4, 2.5}, {6, 1.5}}));
  ASSERT_EQ(r.eval.size(), 3u);
  TargetCost c = cost_to_target(r, 2.5);
  ASSERT_TRUE(c.reached);
  EXPECT_EQ(c.source, "eval");
  EXPECT_EQ(c.at.step, 4);
  EXPECT_DOUBLE_EQ(c.at.flops, 4e6);
  EXPECT_DOUBLE_EQ(c.at.wall_seconds, 8);
  EXPECT_FALSE(cost_to_target(r, 1.0).reached);
}

TEST(Report, WithoutEvalsTheNineStepAverageDecides) {
  std::vector<double> l{10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1};
  const RunRecord r = load_run(make_run("b", l, {}));
  // Means of 9-step windows ending at step s (1-based): s=9: 54/9=6, s=10: 45/9=5, s=11: 37/9,
  // s=12: 30/9=3.33, s=13: 24/9=2.67.
  TargetCost c = cost_to_target(r, 3.0);
  ASSERT_TRUE(c.reached);
  EXPECT_EQ(c.source, "train");
  EXPECT_EQ(c.at.step, 13);
  EXPECT_NEAR(c.at.loss, 24.0 / 9.0, 1e-12);
}

TEST(Report, DefaultTargetIsTheWorstFinalLossAndRatiosUseTheFirstRun) {
  std::vector<RunRecord> runs{load_run(make_run("c1", {5, 4, 3, 2}, {{2, 4.0}, {4, 3.0}})),
                              load_run(make_run("c2", {5, 3, 2, 1}, {{2, 2.5}, {4, 2.0}}))};
  EXPECT_DOUBLE_EQ(default_target(runs), 3.0);
  const nlohmann::json rep = make_report(runs, 3.0);
  EXPECT_EQ(rep["runs"][0]["target"]["step"], 4);
  EXPECT_EQ(rep["runs"][1]["target"]["step"], 2);
  EXPECT_DOUBLE_EQ(rep["runs"][1]["target"]["flops_vs_first"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(rep["runs"][1]["device_hours"].get<double>(), 8.0 * 2 / 3600);
  const std::string table = report_table(rep);
  EXPECT_NE(table.find("| moekit_report_c2 | qwen2 | 500 / 1k | 4 |"), std::string::npos) << table;
  EXPECT_NE(table.find("0.50x"), std::string::npos) << table;
}

TEST(Report, BadRunsAreClearErrors) {
  EXPECT_THROW(load_run("/nonexistent/run"), Error);
  const std::string d = make_run("bad", {5, 4}, {});
  std::ofstream(fs::path(d) / "metrics.jsonl", std::ios::app) << "{not json\n";
  try {
    load_run(d);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl line 3"), std::string::npos) << e.what();
  }
  fs::remove(fs::path(d) / "summary.json");
  EXPECT_THROW(load_run(d), Error);
}

// Fields of other types than the trainer writes: a moekit error naming the file and key, or a
// tolerant default (model_type, skipped), never nlohmann's type_error naming no file.
TEST(Report, OddFieldTypesAreHandled) {
  const std::string dir = make_run("odd", {5, 4}, {});
  std::ofstream(fs::path(dir) / "summary.json", std::ios::trunc)
      << R"({"model_type": 7, "params_total": 1000, "params_active": 500, "train_flops_per_token": 1e4,
             "wall_seconds": 4, "world": 2})";
  std::ofstream(fs::path(dir) / "metrics.jsonl", std::ios::app)
      << R"({"step": 3, "tokens": 300, "flops": 3e6, "wall_seconds": 6, "loss": 3, "skipped": "no"})" << "\n";
  const RunRecord r = load_run(dir);
  EXPECT_EQ(r.model_type, "");
  EXPECT_EQ(r.train.size(), 3u);
  std::ofstream(fs::path(dir) / "metrics.jsonl", std::ios::app) << R"({"step": "4", "loss": 1})" << "\n";
  try {
    load_run(dir);
    ADD_FAILURE() << "a step of type string was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl: step must be an integer"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moekit::train
