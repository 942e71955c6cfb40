// `moekit report`: training cost of runs side by side, from their run directories (metrics.jsonl,
// eval.jsonl, summary.json): tokens, FLOPs, wall time, device-hours, losses, and the cost to
// reach a target loss. The plots are made by launch/plot_report.py (embedded in the binary).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moekit::train {

struct RunPoint {  // one logged step or evaluation
  int64_t step = 0;
  double tokens = 0, flops = 0, wall_seconds = 0, loss = 0;
};

struct RunRecord {
  std::string dir, name, model_type;
  double params_total = 0, params_active = 0, flops_per_token = 0;
  int64_t world = 1;
  std::vector<RunPoint> train, eval;  // eval points carry the tokens/FLOPs/time of their step
  double wall_seconds = 0;
};

// Reads a run directory; errors name the file and line at fault.
RunRecord load_run(const std::string& dir);

struct TargetCost {
  bool reached = false;
  std::string source;  // "eval" or "train" (a 9-step moving average of the train loss)
  RunPoint at;         // the first point at or below the target
};

// First evaluation at or below `target`; runs without evaluations use the smoothed train loss.
TargetCost cost_to_target(const RunRecord& run, double target);

// The default target: the highest final loss among the runs (evaluation where present), so
// that every run reaches it.
double default_target(const std::vector<RunRecord>& runs);

// Everything the table and the plots show.
nlohmann::json make_report(const std::vector<RunRecord>& runs, double target);
// The table (markdown, also printed on stdout).
std::string report_table(const nlohmann::json& report);

// The plotting script's text (launch/plot_report.py, embedded at build time).
const char* plot_script();

}  // namespace moekit::train
