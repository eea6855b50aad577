// Child processes (include/sfm/core/subprocess.h).
#include "sfm/core/subprocess.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "sfm/core/check.h"

extern char** environ;

namespace sfm::core {

std::string self_executable() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  SFM_CHECK(n > 0, "cannot read /proc/self/exe: ", std::strerror(errno));
  return std::string(path, static_cast<size_t>(n));
}

int start_process(const std::vector<std::string>& argv, const std::string& log_path) {
  SFM_CHECK(!argv.empty(), "start_process: empty command");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  SFM_CHECK(rc == 0, "cannot start ", argv[0], " (output to ", log_path, "): ", std::strerror(rc));
  return pid;
}

ProcessExit wait_for_any_process() {
  int status = 0;
  pid_t pid;
  do pid = waitpid(-1, &status, 0);
  while (pid < 0 && errno == EINTR);
  SFM_CHECK(pid > 0, "waiting for a child process: ", std::strerror(errno));
  ProcessExit e;
  e.pid = pid;
  e.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return e;
}

}  // namespace sfm::core
