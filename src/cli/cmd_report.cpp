// moekit report: compare the training cost of finished runs (table on stdout; with --out, also
// report.json, report.md and PNG plots of loss against FLOPs and against time).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "core/check.h"
#include "core/log.h"
#include "train/report.h"

namespace moekit::cli {

namespace {

namespace fs = std::filesystem;

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << text;
  MOEKIT_CHECK(f.good(), "report: cannot write '", p.string(), "'");
}

// Runs the embedded plotting script with Debian's python3 + matplotlib; warns when it cannot.
bool make_plots(const fs::path& out) {
  const char* env = std::getenv("MOEKIT_PYTHON");
  const std::string py = env && *env ? env : (fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3");
  const std::string cmd = py + " '" + (out / "plot_report.py").string() + "' '" + (out / "report.json").string() +
                          "' '" + out.string() + "' > /dev/null";
  if (std::system(cmd.c_str()) != 0) {
    log_warn("report: plotting failed (needs matplotlib for ", py,
             ": apt-get install python3-matplotlib); the table and report.json are written");
    return false;
  }
  return true;
}

}  // namespace

void add_report_command(CLI::App& root, std::vector<Command>* out) {
  struct Opts {
    std::vector<std::string> runs;
    double target = NAN;
    std::string out;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* app = root.add_subcommand(
      "report",
      "Compare finished runs: tokens, FLOPs, wall time, device-hours, losses and the cost to reach a target\n"
      "loss (the first evaluation at or below it). The first run is the baseline for the ratios.");
  app->add_option("runs", o->runs, "Run directories (metrics.jsonl, eval.jsonl, summary.json)")->required();
  app->add_option("--target-loss", o->target,
                  "Loss to reach (default: the highest final loss among the runs, so all reach it)");
  app->add_option("--out", o->out, "Write report.json, report.md, loss_vs_flops.png, loss_vs_time.png here");
  app->add_flag("--json", o->json, "Print the report as one JSON line last");
  out->push_back({app, [o]() {
                    std::vector<train::RunRecord> runs;
                    for (const auto& d : o->runs) runs.push_back(train::load_run(d));
                    const double target = std::isnan(o->target) ? train::default_target(runs) : o->target;
                    nlohmann::json rep = train::make_report(runs, target);
                    const std::string table = train::report_table(rep);
                    std::printf("%s", table.c_str());
                    if (!o->out.empty()) {
                      const fs::path out = o->out;
                      fs::create_directories(out);
                      write_text(out / "report.json", rep.dump(1) + "\n");
                      write_text(out / "report.md", "# moekit report\n\n" + table);
                      write_text(out / "plot_report.py", train::plot_script());
                      if (make_plots(out))
                        log_info("report: ", (out / "loss_vs_flops.png").string(), ", ",
                                 (out / "loss_vs_time.png").string());
                    }
                    if (o->json) {
                      for (auto& r : rep["runs"]) r.erase("train"), r.erase("eval");
                      std::printf("%s\n", rep.dump().c_str());
                    }
                    return 0;
                  }});
}

}  // namespace moekit::cli
