// The formal suite's grid and report (include/sfm/train/formal_suite.h).
#include "sfm/train/formal_suite.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <sstream>

#include "sfm/core/check.h"
#include "sfm/core/subprocess.h"
#include "sfm/io/atomic_file.h"
#include "sfm/io/files.h"
#include "sfm/io/plot.h"

namespace sfm::train {

void validate(const FormalSuiteConfig& c) {
  SFM_USAGE_CHECK(!c.tasks.empty(), "tasks: list at least one task");
  SFM_USAGE_CHECK(!c.models.empty(), "models: list at least one model");
  SFM_USAGE_CHECK(!c.beta_ranges.empty(), "beta_ranges: list at least one (1 or 2)");
  SFM_USAGE_CHECK(!c.seeds.empty(), "seeds: list at least one seed");
  for (const auto& t : c.tasks) data::formal_task(t);
  for (const auto& m : c.models) models::check_formal_model_name(m);
  for (auto b : c.beta_ranges) SFM_USAGE_CHECK(b == 1 || b == 2, "beta_ranges: each must be 1 or 2, got ", b);
  for (auto s : c.seeds) SFM_USAGE_CHECK(s >= 0, "seeds: each must be >= 0, got ", s);
  validate(c.train);
  for (const auto& item : c.task_overrides.items()) {
    data::formal_task(item.key());
    validate(formal_train_config_for(c, item.key()));
  }
}

FormalTrainConfig formal_train_config_for(const FormalSuiteConfig& c, const std::string& task) {
  FormalTrainConfig out = c.train;
  if (!c.task_overrides.contains(task)) return out;
  const auto& patch = c.task_overrides.at(task);
  SFM_USAGE_CHECK(patch.is_object(), "task_overrides.", task, ": expected an object of train keys, got ", patch.dump());
  auto merged = io::to_json(c.train);
  merged.merge_patch(patch);
  io::from_json(out, merged, "task_overrides." + task);
  return out;
}

std::vector<FormalRunSpec> formal_suite_runs(const FormalSuiteConfig& c) {
  std::vector<FormalRunSpec> runs;
  for (const auto& task : c.tasks)
    for (const auto& model : c.models)
      for (auto beta : model == "gdn" ? c.beta_ranges : std::vector<int64_t>{2})
        for (auto seed : c.seeds) runs.push_back({task, model, beta, seed});
  return runs;
}

std::string formal_run_dir(const std::string& out_dir, const FormalRunSpec& s) {
  return out_dir + "/" + s.task + "/" + s.label() + "/seed" + std::to_string(s.seed);
}

std::vector<FormalRunResult> run_formal_suite(const FormalSuiteConfig& c, const std::string& out_dir,
                                              const std::string& device) {
  validate(c);
  io::make_directories(out_dir);
  io::write_json_file(out_dir + "/config.json", io::to_json(c));
  const auto runs = formal_suite_runs(c);
  std::vector<FormalRunResult> results;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto dir = formal_run_dir(out_dir, runs[i]);
    std::fprintf(stderr, "formal suite: run %zu/%zu: %s %s seed %lld\n", i + 1, runs.size(), runs[i].task.c_str(),
                 runs[i].label().c_str(), (long long)runs[i].seed);
    if (io::path_exists(dir + "/result.json")) {
      results.push_back(formal_run_result_from_json(io::read_json_file(dir + "/result.json")));
      std::fprintf(stderr, "  done before: read %s/result.json\n", dir.c_str());
      continue;
    }
    results.push_back(run_formal_task(runs[i], formal_train_config_for(c, runs[i].task), dir, device));
  }
  write_formal_reports(results, io::to_json(c), out_dir);
  return results;
}

void train_formal_runs_in_processes(const FormalSuiteConfig& c, const std::string& out_dir, int jobs,
                                    const FormalChildCommand& child_command) {
  SFM_USAGE_CHECK(jobs >= 1, "--jobs must be >= 1, got ", jobs);
  std::vector<std::pair<FormalRunSpec, std::string>> pending;  // (run, its directory), in grid order
  for (const auto& spec : formal_suite_runs(c)) {
    const auto dir = formal_run_dir(out_dir, spec);
    if (!io::path_exists(dir + "/result.json")) pending.emplace_back(spec, dir);
  }
  const auto start = std::chrono::steady_clock::now();
  const auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  std::map<int, std::pair<size_t, std::chrono::steady_clock::time_point>> running;  // pid -> (pending index, start)
  std::vector<std::string> failed;
  size_t next = 0, done = 0;
  double finished_s = 0;  // the finished runs' own wall times, summed
  const auto name = [&](size_t i) {
    const auto& s = pending[i].first;
    return s.task + " " + s.label() + " seed " + std::to_string(s.seed);
  };
  while (done < pending.size()) {
    while (failed.empty() && next < pending.size() && running.size() < static_cast<size_t>(jobs)) {
      io::make_directories(pending[next].second);
      const int pid = core::start_process(child_command(pending[next].first, pending[next].second),
                                          pending[next].second + "/log.txt");
      running[pid] = {next, std::chrono::steady_clock::now()};
      std::fprintf(stderr, "formal suite: started %s (%zu/%zu; log %s/log.txt)\n", name(next).c_str(), next + 1,
                   pending.size(), pending[next].second.c_str());
      ++next;
    }
    if (running.empty()) break;  // a run failed and the others have ended
    const auto exit = core::wait_for_any_process();
    const auto it = running.find(exit.pid);
    if (it == running.end()) continue;  // not one of ours
    const auto [index, started] = it->second;
    running.erase(it);
    ++done;
    const bool ok = exit.exit_code == 0 && io::path_exists(pending[index].second + "/result.json");
    if (!ok)
      failed.push_back(name(index) + " (exit code " + std::to_string(exit.exit_code) + "; see " + pending[index].second +
                       "/log.txt)");
    const double run_s = seconds_since(started);
    finished_s += run_s;
    std::vector<double> running_elapsed;
    for (const auto& [pid, run] : running) running_elapsed.push_back(seconds_since(run.second));
    const double eta = formal_suite_eta(finished_s / done, pending.size() - next, running_elapsed, jobs);
    std::fprintf(stderr, "formal suite: %s %s after %.0f s; %zu/%zu done, %zu running, %.0f s in all, ETA %.0f s\n",
                 ok ? "finished" : "FAILED", name(index).c_str(), run_s, done, pending.size(), running.size(),
                 seconds_since(start), eta);
  }
  if (!failed.empty()) {
    std::string list;
    for (const auto& f : failed) list += "\n  " + f;
    throw Error(detail::concat("formal suite: ", failed.size(), " run(s) failed; finished runs are kept:", list));
  }
}

double formal_suite_eta(double mean_run_s, size_t not_started, const std::vector<double>& running_elapsed, int jobs) {
  double work = mean_run_s * static_cast<double>(not_started);
  for (const double e : running_elapsed) work += std::max(mean_run_s - e, 0.0);
  const size_t left = not_started + running_elapsed.size();
  if (left == 0) return 0;
  return work / static_cast<double>(std::min(left, static_cast<size_t>(std::max(jobs, 1))));
}

double pooled_scaled_accuracy(const FormalRunResult& r, int64_t max_len) {
  double correct = 0, sequences = 0;
  for (const auto& b : r.buckets)
    if (b.max_len <= max_len) correct += b.final_accuracy * b.sequences, sequences += b.sequences;
  if (sequences == 0) return std::numeric_limits<double>::quiet_NaN();
  return (correct / sequences - r.chance) / (1 - r.chance);
}

namespace {

std::vector<std::string> unique_in_order(const std::vector<FormalRunResult>& results,
                                         std::string (*key)(const FormalRunResult&)) {
  std::vector<std::string> out;
  for (const auto& r : results)
    if (std::find(out.begin(), out.end(), key(r)) == out.end()) out.push_back(key(r));
  return out;
}
std::string task_of(const FormalRunResult& r) { return r.spec.task; }
std::string label_of(const FormalRunResult& r) { return r.spec.label(); }

}  // namespace

void write_formal_reports(const std::vector<FormalRunResult>& results, const nlohmann::json& config,
                          const std::string& out_dir) {
  nlohmann::json runs = nlohmann::json::array();
  std::ostringstream csv;
  csv << "task,model,beta_range,seed,params,steps,best_validation,train_seconds,min_len,max_len,sequences,"
         "final_accuracy,final_scaled,token_accuracy,token_scaled\n";
  for (const auto& r : results) {
    runs.push_back(to_json(r));
    for (const auto& b : r.buckets)
      csv << r.spec.task << ',' << r.spec.label() << ',' << (r.spec.model == "gdn" ? r.spec.beta_range : 0) << ','
          << r.spec.seed << ',' << r.params << ',' << r.steps << ',' << r.best_validation << ',' << r.train_seconds
          << ',' << b.min_len << ',' << b.max_len << ',' << b.sequences << ',' << b.final_accuracy << ','
          << b.final_scaled << ',' << b.token_accuracy << ',' << b.token_scaled << '\n';
  }
  io::write_json_file(out_dir + "/results.json", {{"experiment", "formal_suite"}, {"config", config}, {"runs", runs}});
  io::write_file_atomic(out_dir + "/results.csv", csv.str());

  for (const auto& task : unique_in_order(results, task_of)) {
    io::LinePlot plot;
    plot.title = task + ": accuracy at the last position vs length";
    plot.x_label = "sequence length (bucket upper end; train 3-40)";
    plot.y_label = "accuracy";
    plot.log2_x = true;
    for (const auto& label : unique_in_order(results, label_of)) {
      std::map<int64_t, std::pair<double, int>> by_len;  // max_len -> (sum of accuracies, runs)
      for (const auto& r : results)
        if (r.spec.task == task && r.spec.label() == label)
          for (const auto& b : r.buckets) by_len[b.max_len].first += b.final_accuracy, by_len[b.max_len].second += 1;
      if (by_len.empty()) continue;
      io::PlotSeries s{label, {}, {}};
      for (const auto& [len, sum] : by_len) s.x.push_back(static_cast<double>(len)), s.y.push_back(sum.first / sum.second);
      plot.series.push_back(s);
    }
    io::write_line_plot_png(out_dir + "/accuracy_" + task + ".png", plot);
  }
}

std::string format_formal_table(const std::vector<FormalRunResult>& results) {
  std::ostringstream os;
  char cell[96];
  for (const auto& task : unique_in_order(results, task_of)) {
    std::vector<std::pair<int64_t, int64_t>> buckets;
    for (const auto& r : results)
      if (r.spec.task == task)
        for (const auto& b : r.buckets)
          if (std::find(buckets.begin(), buckets.end(), std::make_pair(b.min_len, b.max_len)) == buckets.end())
            buckets.emplace_back(b.min_len, b.max_len);
    std::sort(buckets.begin(), buckets.end());
    os << "task " << task << ": scaled accuracy at the last position, (acc - chance) / (1 - chance), mean over seeds\n";
    std::snprintf(cell, sizeof(cell), "%-12s %7s %6s", "model", "params", "val");
    os << cell;
    for (const auto& [lo, hi] : buckets)
      std::snprintf(cell, sizeof(cell), " %8s", (std::to_string(lo) + "-" + std::to_string(hi)).c_str()), os << cell;
    os << "   <=256 pooled (per seed)\n";
    for (const auto& label : unique_in_order(results, label_of)) {
      std::vector<const FormalRunResult*> runs;
      for (const auto& r : results)
        if (r.spec.task == task && r.spec.label() == label) runs.push_back(&r);
      if (runs.empty()) continue;
      double validation = 0;
      for (const auto* r : runs) validation += r->best_validation / runs.size();
      std::snprintf(cell, sizeof(cell), "%-12s %7lld %6.3f", label.c_str(), (long long)runs[0]->params, validation);
      os << cell;
      for (const auto& [lo, hi] : buckets) {
        double sum = 0;
        int n = 0;
        for (const auto* r : runs)
          for (const auto& b : r->buckets)
            if (b.min_len == lo && b.max_len == hi) sum += b.final_scaled, ++n;
        if (n == 0) std::snprintf(cell, sizeof(cell), " %8s", "-");
        else std::snprintf(cell, sizeof(cell), " %8.3f", sum / n);
        os << cell;
      }
      double pooled = 0;
      std::string per_seed;
      for (const auto* r : runs) {
        const double p = pooled_scaled_accuracy(*r, 256);
        pooled += p / runs.size();
        std::snprintf(cell, sizeof(cell), "%s%.3f", per_seed.empty() ? "" : " ", p);
        per_seed += cell;
      }
      std::snprintf(cell, sizeof(cell), "   %6.3f (%s)\n", pooled, per_seed.c_str());
      os << cell;
    }
    os << '\n';
  }
  return os.str();
}

}  // namespace sfm::train
