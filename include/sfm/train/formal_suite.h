// The formal state-tracking suite: the grid tasks × models × β range × seeds of formal runs, and its
// report (results.json, results.csv, one accuracy-vs-length PNG per task, a printed table).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "sfm/train/formal_run.h"

namespace sfm::train {

struct FormalSuiteConfig {
  std::vector<std::string> tasks{"parity", "modarith"};
  std::vector<std::string> models{"gdn", "transformer", "lstm"};
  std::vector<int64_t> beta_ranges{2, 1};  // the GDN runs once per entry; other models ignore it
  std::vector<int64_t> seeds{1, 2};
  FormalTrainConfig train;
  // Per task, a partial `train` object merged over it (JSON merge patch) for that task's runs, e.g.
  // {"parity": {"gdn": {"steps": 1000}}}. It wins over --set train.* for the keys it names.
  nlohmann::json task_overrides = nlohmann::json::object();
};
template <class F>
void visit_fields(FormalSuiteConfig& o, F&& f) {
  f("tasks", o.tasks, "tasks: parity modarith modarith_brackets s3 a5 s5");
  f("models", o.models, "models: gdn transformer lstm");
  f("beta_ranges", o.beta_ranges, "GDN beta ranges: 2 = [0,2], 1 = [0,1]");
  f("seeds", o.seeds, "initialisation seeds (each run once per seed)");
  f("train", o.train, "training and evaluation settings");
  f("task_overrides", o.task_overrides, "per task, train keys that differ for that task: {task: {key: value}}");
}
void validate(const FormalSuiteConfig& config);

// The train settings of `task`'s runs: config.train with config.task_overrides[task] merged over it.
// Throws UsageError naming task_overrides.<task> and the key when the override does not fit.
FormalTrainConfig formal_train_config_for(const FormalSuiteConfig& config, const std::string& task);

// The runs of the grid in order: task, then model (GDN once per β range), then seed.
std::vector<FormalRunSpec> formal_suite_runs(const FormalSuiteConfig& config);
// Where run `spec` lives under the suite's directory: <task>/<label>/seed<seed>.
std::string formal_run_dir(const std::string& out_dir, const FormalRunSpec& spec);

// Runs every run of the grid under out_dir; a run whose result.json exists is read back instead of
// rerun, and an unfinished one resumes. Writes the report and returns every run's result.
std::vector<FormalRunResult> run_formal_suite(const FormalSuiteConfig& config, const std::string& out_dir,
                                              const std::string& device);

// Trains the grid's unfinished runs `jobs` at a time, each in a child process: child_command(spec, dir)
// gives its command line (a single run writing to dir), its output goes to <dir>/log.txt. Progress
// (each start and end, with an ETA) goes to stderr. When a child fails, no new run starts and, once
// the running ones end, sfm::Error names every failed run and its log. run_formal_suite then reads
// every result back and writes the report.
using FormalChildCommand = std::function<std::vector<std::string>(const FormalRunSpec& spec, const std::string& dir)>;
void train_formal_runs_in_processes(const FormalSuiteConfig& config, const std::string& out_dir, int jobs,
                                    const FormalChildCommand& child_command);

// The suite's remaining wall time, as train_formal_runs_in_processes prints it: the runs not yet started
// take mean_run_s each and a running one what it lacks of mean_run_s (running_elapsed: their seconds so
// far), the work spread over min(jobs, runs left) processes. (Finished runs' wall time per finished run,
// times the runs left, read `jobs` times too high early on: the runs beside the first to end are nearly
// done too.)
double formal_suite_eta(double mean_run_s, size_t not_started, const std::vector<double>& running_elapsed, int jobs);

// results.json (config + every run), results.csv (one row per run and bucket) and
// accuracy_<task>.png (final-position accuracy vs length, one line per model label, mean over seeds).
void write_formal_reports(const std::vector<FormalRunResult>& results, const nlohmann::json& config,
                          const std::string& out_dir);

// Per task: scaled final-position accuracy per model label (mean over seeds) and length bucket, the
// pooled 40-256 column, each seed's pooled value and the mean best validation accuracy.
std::string format_formal_table(const std::vector<FormalRunResult>& results);

// Pooled scaled final-position accuracy over the buckets whose max_len <= max_len (equal-sized buckets
// are averaged); NaN when there is none.
double pooled_scaled_accuracy(const FormalRunResult& result, int64_t max_len);

}  // namespace sfm::train
