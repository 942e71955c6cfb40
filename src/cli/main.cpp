// moekit: one binary, one subcommand per job. Errors a user can cause print one line naming
// what is wrong and exit 1; command-line mistakes exit with CLI11's code (non-zero).
#include <csignal>
#include <cstdio>
#include <exception>
#include <new>

#include "cli/commands.h"
#include "core/check.h"

int main(int argc, char** argv) {
  CLI::App app{"moekit: upcycle dense Qwen checkpoints into fine-grained mixture-of-experts models and train them",
               "moekit"};
  app.set_version_flag("--version", std::string("moekit ") + MOEKIT_VERSION
#ifdef MOEKIT_WITH_CUDA
                                        + " (CUDA)"
#else
                                        + " (CPU only)"
#endif
  );
  app.require_subcommand(1);
  std::vector<moekit::cli::Command> commands;
  moekit::cli::add_init_command(app, &commands);
  moekit::cli::add_eval_command(app, &commands);
  moekit::cli::add_data_command(app, &commands);
  moekit::cli::add_train_command(app, &commands);
  moekit::cli::add_export_command(app, &commands);
  moekit::cli::add_report_command(app, &commands);
  moekit::cli::add_cost_command(app, &commands);
  moekit::cli::add_upcycle_command(app, &commands);
  // CLI11 reports a mistyped subcommand as "a subcommand is required"; name it instead.
  std::string names;
  bool known = false;
  for (const auto& c : commands) {
    names += (names.empty() ? "" : ", ") + c.app->get_name();
    known = known || (argc > 1 && c.app->get_name() == argv[1]);
  }
  if (argc > 1 && argv[1][0] != '-' && !known) {
    std::fprintf(stderr, "moekit: error: unknown subcommand '%s' (expected one of: %s; see moekit --help)\n",
                 argv[1], names.c_str());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // Past a file-size limit (ulimit -f) write() then fails with EFBIG, which every writer reports
  // and cleans up after, instead of SIGXFSZ killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    for (auto& c : commands)
      if (c.app->parsed()) return c.run();
  } catch (const moekit::Error& e) {
    std::fprintf(stderr, "moekit: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "moekit: error: out of memory in 'moekit %s' (a size in the input may be more than this "
                 "machine can hold)\n", argc > 1 ? argv[1] : "");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moekit: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
