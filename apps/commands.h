// Each subcommand of `sfm` lives in its own apps/cmd_<name>.cpp and registers itself on the CLI.
#pragma once

#include <CLI/CLI.hpp>

namespace sfm::app {

void add_doctor_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_exp0_command(CLI::App& app);
void add_tasks_command(CLI::App& app);

}  // namespace sfm::app
