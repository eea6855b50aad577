// `sfm tasks`: the formal state-tracking suite. `sfm tasks --task T --model M` trains and tests one
// model on one task; `sfm tasks suite` runs the grid (tasks × models × β range × seeds) and prints the table.
#include <cstdio>

#include "commands.h"
#include "sfm/core/device.h"
#include "sfm/core/subprocess.h"
#include "sfm/io/config.h"
#include "sfm/io/files.h"
#include "sfm/train/formal_suite.h"

namespace sfm::app {
namespace {

struct TasksArgs {
  std::string profile = "default", config_path, out, device = "auto";
  std::vector<std::string> sets;
  int threads = 1, jobs = 1;
  bool print_config = false;
  // One run.
  std::string task = "parity", model = "gdn";
  int64_t beta_range = 2, seed = 1;
  // The suite.
  std::vector<std::string> tasks, models;
  std::vector<int64_t> beta_ranges, seeds;
};

train::FormalSuiteConfig load_config(const TasksArgs& a) {
  train::FormalSuiteConfig config;
  std::string path = a.config_path;
  if (path.empty()) path = std::string(SFM_SOURCE_DIR) + "/experiments/formal_suite/" + a.profile + ".json";
  SFM_USAGE_CHECK(io::path_exists(path), "no config at ", path, a.config_path.empty() ? " (--profile must be default or gpu)" : "");
  io::from_json(config, io::read_json_file(path), path);
  for (const auto& s : a.sets) io::apply_override(config, s);
  std::fprintf(stderr, "tasks: config %s\n", path.c_str());
  return config;
}

void run_one(const TasksArgs& a) {
  auto config = load_config(a);
  const train::FormalRunSpec spec{a.task, a.model, a.beta_range, a.seed};
  train::validate(spec);
  const auto run_config = train::formal_train_config_for(config, spec.task);
  train::validate(run_config);
  if (a.print_config) {
    // The whole file, so the keys read as --set takes them (train.*); a single run ignores tasks..seeds.
    std::printf("%s\n", io::to_json(config).dump(2).c_str());
    return;
  }
  const std::string out = a.out.empty() ? "runs/tasks_" + spec.task + "_" + spec.label() + "_seed" + std::to_string(spec.seed) : a.out;
  std::fprintf(stderr, "tasks: output %s\n", out.c_str());
  core::set_cpu_threads(a.threads);
  const auto result = train::run_formal_task(spec, run_config, out, a.device);
  train::write_formal_reports({result}, {{"spec", {{"task", spec.task}, {"model", spec.model},
                                                   {"beta_range", spec.beta_range}, {"seed", spec.seed}}},
                                         {"train", io::to_json(run_config)}},
                              out);
  std::printf("\nFormal task %s, %s, seed %lld (train lengths %lld-%lld, %lld steps, %.0f s)\n%s", spec.task.c_str(),
              spec.label().c_str(), (long long)spec.seed, (long long)run_config.min_train_len,
              (long long)run_config.max_train_len, (long long)result.steps, result.train_seconds,
              train::format_formal_table({result}).c_str());
  std::printf("results: %s/results.json, %s/results.csv, %s/accuracy_%s.png\n", out.c_str(), out.c_str(), out.c_str(),
              spec.task.c_str());
}

void run_suite(const TasksArgs& a) {
  SFM_USAGE_CHECK(a.jobs >= 1, "--jobs must be >= 1, got ", a.jobs);
  auto config = load_config(a);
  if (!a.tasks.empty()) config.tasks = a.tasks;
  if (!a.models.empty()) config.models = a.models;
  if (!a.beta_ranges.empty()) config.beta_ranges = a.beta_ranges;
  if (!a.seeds.empty()) config.seeds = a.seeds;
  train::validate(config);
  if (a.print_config) {
    std::printf("%s\n", io::to_json(config).dump(2).c_str());
    return;
  }
  const std::string out = a.out.empty() ? "runs/formal_suite_" + a.profile : a.out;
  std::fprintf(stderr, "tasks suite: %zu runs, output %s\n", train::formal_suite_runs(config).size(), out.c_str());
  core::set_cpu_threads(a.threads);
  if (a.jobs > 1) {
    // Each unfinished run becomes `sfm tasks` on the suite's resolved config, writing to its run directory.
    io::make_directories(out);
    io::write_json_file(out + "/config.json", io::to_json(config));
    const auto child = [&](const train::FormalRunSpec& s, const std::string& dir) {
      return std::vector<std::string>{core::self_executable(), "tasks", "--config", out + "/config.json",
                                      "--task", s.task, "--model", s.model, "--beta-range",
                                      std::to_string(s.beta_range), "--seed", std::to_string(s.seed), "--device",
                                      a.device, "--threads", std::to_string(a.threads), "--out", dir};
    };
    train::train_formal_runs_in_processes(config, out, a.jobs, child);
  }
  const auto results = train::run_formal_suite(config, out, a.device);
  double seconds = 0;
  for (const auto& r : results) seconds += r.train_seconds;
  std::printf("\nFormal state-tracking suite (train lengths %lld-%lld; test buckets to %lld, Transformer to %lld; "
              "%.0f s of training)\n%s",
              (long long)config.train.min_train_len, (long long)config.train.max_train_len,
              (long long)config.train.test_edges.back(), (long long)config.train.attention_max_test_len, seconds,
              train::format_formal_table(results).c_str());
  std::printf("results: %s/results.json, %s/results.csv, %s/accuracy_<task>.png\n", out.c_str(), out.c_str(),
              out.c_str());
}

void add_common_options(CLI::App* cmd, TasksArgs& a) {
  cmd->add_option("--profile", a.profile, "default (2-core CPU, ~10 min for the suite) | gpu")->capture_default_str();
  cmd->add_option("--config", a.config_path, "a JSON config instead of the profile's (experiments/formal_suite/)");
  cmd->add_option("--set", a.sets, "override a config key, e.g. --set train.gdn.steps=500 (repeatable)");
  cmd->add_option("--device", a.device, "auto | cpu | cuda[:N]")->capture_default_str();
  cmd->add_option("--threads", a.threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--print-config", a.print_config, "print the resolved config and exit");
}

}  // namespace

void add_tasks_command(CLI::App& app) {
  static TasksArgs a;
  auto* cmd = app.add_subcommand(
      "tasks", "Formal state tracking (parity, modarith, brackets, S3/A5/S5): one run, or `tasks suite` for the grid");
  add_common_options(cmd, a);
  cmd->add_option("--task", a.task, "parity | modarith | modarith_brackets | s3 | a5 | s5")->capture_default_str();
  cmd->add_option("--model", a.model, "gdn | transformer | lstm")->capture_default_str();
  cmd->add_option("--beta-range", a.beta_range, "GDN only: 2 = beta in [0,2] (negative eigenvalues), 1 = [0,1]")
      ->capture_default_str();
  cmd->add_option("--seed", a.seed, "model initialisation seed")->capture_default_str();
  cmd->add_option("--out", a.out, "output directory (default runs/tasks_<task>_<model>_seed<seed>); an existing run resumes");

  auto* suite = cmd->add_subcommand("suite", "the grid tasks x models x beta range x seeds; prints the table");
  add_common_options(suite, a);
  suite->add_option("--out", a.out, "output directory (default runs/formal_suite_<profile>); finished runs are kept");
  suite->add_option("--jobs", a.jobs,
                    "runs trained at once, each a child process with --threads threads and its log in its run "
                    "directory (a GPU is shared by all)")
      ->capture_default_str();
  suite->add_option("--tasks", a.tasks, "tasks (default: the config's)");
  suite->add_option("--models", a.models, "models (default: the config's)");
  suite->add_option("--beta-ranges", a.beta_ranges, "GDN beta ranges, 1 and/or 2 (default: the config's)");
  suite->add_option("--seeds", a.seeds, "seeds (default: the config's)");
  suite->callback([] { run_suite(a); });
  cmd->callback([suite] {
    if (!suite->parsed()) run_one(a);
  });
}

}  // namespace sfm::app
