// Subcommand registry: each cmd_*.cpp adds its CLI11 subcommand and the function that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace moekit::cli {

struct Command {
  CLI::App* app;
  std::function<int()> run;
};

void add_eval_command(CLI::App& root, std::vector<Command>* out);
void add_init_command(CLI::App& root, std::vector<Command>* out);
void add_data_command(CLI::App& root, std::vector<Command>* out);
void add_train_command(CLI::App& root, std::vector<Command>* out);
void add_export_command(CLI::App& root, std::vector<Command>* out);
void add_report_command(CLI::App& root, std::vector<Command>* out);
void add_cost_command(CLI::App& root, std::vector<Command>* out);
void add_upcycle_command(CLI::App& root, std::vector<Command>* out);
// `data tokenize`, `data decode`, `data convert-tokenizer` (cmd_tokenize.cpp).
void add_tokenizer_subcommands(CLI::App* data, std::vector<Command>* out);

// "1,2,3" -> {1, 2, 3}; errors name the offending item.
std::vector<int64_t> parse_int_list(const std::string& text, const std::string& what);

}  // namespace moekit::cli
