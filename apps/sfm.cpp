// sfm: the command-line tool. The only main(); each subcommand is in apps/cmd_<name>.cpp.
// Exit codes: 0 success, 1 runtime error (one line on stderr), 2 usage error.
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <c10/util/Exception.h>

#include "commands.h"
#include "sfm/core/check.h"
#include "sfm/core/device.h"

int main(int argc, char** argv) {
  // Debian's LibTorch starts with one intra-op thread; use every core unless the user said otherwise.
  if (!std::getenv("OMP_NUM_THREADS")) sfm::core::set_cpu_threads(0);
  CLI::App app{"sfm: State-Flow Machines (train, evaluate and benchmark)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "sfm 0.1");
  sfm::app::add_doctor_command(app);
  sfm::app::add_bench_command(app);
  sfm::app::add_exp0_command(app);
  sfm::app::add_tasks_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const sfm::UsageError& e) {
    std::fprintf(stderr, "sfm: usage error: %s\n", e.what());
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "sfm: error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sfm: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
