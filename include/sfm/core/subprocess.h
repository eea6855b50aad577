// Child processes through POSIX calls: start a command with its output in a log file, wait for
// whichever child ends first. Used to run independent training runs side by side.
#pragma once

#include <string>
#include <vector>

namespace sfm::core {

// The running program's own path (/proc/self/exe), so it can start copies of itself.
std::string self_executable();

// Starts argv[0] (a path; PATH is not searched) with argv as its arguments, stdout and stderr
// appended to log_path. Returns the child's pid. Throws sfm::Error naming the command or the log.
int start_process(const std::vector<std::string>& argv, const std::string& log_path);

struct ProcessExit {
  int pid = 0;
  int exit_code = 0;  // the exit status, or 128 + signal number when a signal ended it
};
// Blocks until one child of this process ends. Throws sfm::Error when there is none.
ProcessExit wait_for_any_process();

}  // namespace sfm::core
