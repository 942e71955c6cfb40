#include "train/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "train/plot_script.h"

namespace moekit::train {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// One metrics line or summary.json: a few hundred bytes, three levels deep.
ParseLimits line_limits() {
  ParseLimits l;
  l.max_bytes = size_t{1} << 20;
  l.max_depth = 8;
  return l;
}

std::vector<json> read_jsonl(const std::string& path, bool required) {
  std::vector<json> rows;
  std::ifstream f(path);
  if (!f) {
    MOEKIT_CHECK(!required, "report: '", path, "' does not exist (is this a moekit run directory?)");
    return rows;
  }
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n) {
    if (line.empty()) continue;
    std::optional<json> j = try_parse_json(line, line_limits());
    MOEKIT_CHECK(j && j->is_object(), "report: ", path, " line ", n, " is not a JSON object");
    rows.push_back(std::move(*j));
  }
  return rows;
}

double num(const json& j, const char* key, const std::string& where) {
  MOEKIT_CHECK(j.contains(key) && j[key].is_number(), "report: ", where, ": field '", key,
               "' is missing or not a number");
  return j[key].get<double>();
}

int64_t step_of(const json& j, const std::string& where) {
  MOEKIT_CHECK(j.contains("step"), "report: ", where, ": field 'step' is missing");
  return json_int(j["step"], "report: " + where, "step", 0, std::numeric_limits<int64_t>::max());
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string human(double v) {  // 1.23e9 -> "1.23G"
  const char* units[] = {"", "k", "M", "G", "T", "P", "E"};
  int u = 0;
  while (std::fabs(v) >= 1000 && u < 6) v /= 1000, ++u;
  return fmt("%.3g", v) + units[u];
}

}  // namespace

RunRecord load_run(const std::string& dir) {
  MOEKIT_CHECK(fs::is_directory(dir), "report: run directory '", dir, "' does not exist");
  RunRecord r;
  r.dir = dir;
  r.name = fs::path(dir).lexically_normal().filename().string();
  if (r.name.empty()) r.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  const std::string sp = (fs::path(dir) / "summary.json").string();
  MOEKIT_CHECK(fs::exists(sp), "report: '", sp, "' does not exist (did the run finish?)");
  const json s = load_json_file(sp, line_limits());
  MOEKIT_CHECK(s.is_object(), "report: '", sp, "' is not a JSON object");
  r.model_type = json_value_or<std::string>(s, "model_type", "");
  r.params_total = num(s, "params_total", sp);
  r.params_active = num(s, "params_active", sp);
  r.flops_per_token = num(s, "train_flops_per_token", sp);
  r.wall_seconds = num(s, "wall_seconds", sp);
  r.world = s.contains("world") ? json_int(s["world"], sp, "world", 1, int64_t{1} << 30) : 1;

  const std::string mp = (fs::path(dir) / "metrics.jsonl").string();
  for (const json& m : read_jsonl(mp, true)) {
    if (json_value_or<bool>(m, "skipped", false)) continue;
    RunPoint p;
    p.step = step_of(m, mp);
    p.tokens = num(m, "tokens", mp);
    p.flops = num(m, "flops", mp);
    p.wall_seconds = num(m, "wall_seconds", mp);
    p.loss = num(m, "loss", mp);
    r.train.push_back(p);
  }
  MOEKIT_CHECK(!r.train.empty(), "report: ", mp, " has no steps");
  const std::string ep = (fs::path(dir) / "eval.jsonl").string();
  for (const json& e : read_jsonl(ep, false)) {
    RunPoint p;
    p.step = step_of(e, ep);
    p.loss = num(e, "loss", ep);
    // The step's position comes from its metrics line.
    auto it = std::find_if(r.train.begin(), r.train.end(), [&](const RunPoint& t) { return t.step == p.step; });
    if (it == r.train.end()) continue;
    p.tokens = it->tokens;
    p.flops = it->flops;
    p.wall_seconds = it->wall_seconds;
    r.eval.push_back(p);
  }
  return r;
}

TargetCost cost_to_target(const RunRecord& run, double target) {
  TargetCost c;
  if (!run.eval.empty()) {
    c.source = "eval";
    for (const RunPoint& p : run.eval)
      if (p.loss <= target) return c.reached = true, c.at = p, c;
    return c;
  }
  c.source = "train";
  double acc = 0;
  const size_t k = 9;
  for (size_t i = 0; i < run.train.size(); ++i) {
    acc += run.train[i].loss;
    if (i >= k) acc -= run.train[i - k].loss;
    const double avg = acc / static_cast<double>(std::min(i + 1, k));
    if (i + 1 >= k && avg <= target) {
      c.reached = true;
      c.at = run.train[i];
      c.at.loss = avg;
      return c;
    }
  }
  return c;
}

double default_target(const std::vector<RunRecord>& runs) {
  double t = -INFINITY;
  for (const RunRecord& r : runs) t = std::max(t, r.eval.empty() ? r.train.back().loss : r.eval.back().loss);
  return t;
}

json make_report(const std::vector<RunRecord>& runs, double target) {
  json rep{{"target_loss", target}, {"runs", json::array()}};
  double base_flops = 0, base_wall = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunRecord& r = runs[i];
    const TargetCost c = cost_to_target(r, target);
    auto points = [](const std::vector<RunPoint>& ps) {
      json a = json::array();
      for (const RunPoint& p : ps)
        a.push_back({{"step", p.step}, {"tokens", p.tokens}, {"flops", p.flops}, {"wall_seconds", p.wall_seconds},
                     {"loss", p.loss}});
      return a;
    };
    json j{{"name", r.name},
           {"dir", r.dir},
           {"model_type", r.model_type},
           {"params_total", r.params_total},
           {"params_active", r.params_active},
           {"train_flops_per_token", r.flops_per_token},
           {"steps", r.train.back().step},
           {"tokens", r.train.back().tokens},
           {"flops", r.train.back().flops},
           {"wall_seconds", r.wall_seconds},
           {"device_hours", r.wall_seconds * static_cast<double>(r.world) / 3600.0},
           {"final_train_loss", r.train.back().loss},
           {"final_eval_loss", r.eval.empty() ? json(nullptr) : json(r.eval.back().loss)},
           {"target",
            {{"reached", c.reached},
             {"source", c.source},
             {"step", c.reached ? json(c.at.step) : json(nullptr)},
             {"tokens", c.reached ? json(c.at.tokens) : json(nullptr)},
             {"flops", c.reached ? json(c.at.flops) : json(nullptr)},
             {"wall_seconds", c.reached ? json(c.at.wall_seconds) : json(nullptr)}}},
           {"train", points(r.train)},
           {"eval", points(r.eval)}};
    if (i == 0 && c.reached) base_flops = c.at.flops, base_wall = c.at.wall_seconds;
    if (c.reached && base_flops > 0) {
      j["target"]["flops_vs_first"] = c.at.flops / base_flops;
      j["target"]["wall_vs_first"] = c.at.wall_seconds / base_wall;
    }
    rep["runs"].push_back(j);
  }
  return rep;
}

std::string report_table(const json& rep) {
  std::ostringstream o;
  o << "| run | model | params active / total | steps | tokens | train FLOPs | wall | device-h | train loss | "
       "eval loss | to target " << fmt("%.4f", rep["target_loss"].get<double>())
    << ": FLOPs | time | FLOPs vs first |\n";
  o << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const json& r : rep["runs"]) {
    const json& t = r["target"];
    o << "| " << r["name"].get<std::string>() << " | " << r["model_type"].get<std::string>() << " | "
      << human(r["params_active"].get<double>()) << " / " << human(r["params_total"].get<double>()) << " | "
      << r["steps"].get<int64_t>() << " | " << human(r["tokens"].get<double>()) << " | "
      << human(r["flops"].get<double>()) << " | " << fmt("%.1f s", r["wall_seconds"].get<double>()) << " | "
      << fmt("%.4f", r["device_hours"].get<double>()) << " | " << fmt("%.4f", r["final_train_loss"].get<double>())
      << " | " << (r["final_eval_loss"].is_null() ? std::string("-") : fmt("%.4f", r["final_eval_loss"].get<double>()))
      << " | ";
    if (t["reached"].get<bool>()) {
      o << human(t["flops"].get<double>()) << " (step " << t["step"].get<int64_t>() << ", "
        << t["source"].get<std::string>() << ") | " << fmt("%.1f s", t["wall_seconds"].get<double>()) << " | "
        << (t.contains("flops_vs_first") ? fmt("%.2fx", t["flops_vs_first"].get<double>()) : std::string("-"))
        << " |\n";
    } else {
      o << "not reached | - | - |\n";
    }
  }
  return o.str();
}

const char* plot_script() { return generated::kPlotScript; }

}  // namespace moekit::train
