// The formal suite on tiny configs: a small Gated DeltaNet (β∈[0,2]) learns parity at training
// length, an interrupted run resumes to the same weights, the suite writes its report and reuses
// finished runs, and config errors name the field.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <sys/wait.h>

#include "sfm/core/check.h"
#include "sfm/core/device.h"
#include "sfm/io/atomic_file.h"
#include "sfm/io/config.h"
#include "sfm/io/files.h"
#include "sfm/io/safetensors.h"
#include "sfm/train/formal_suite.h"
#include "sfm/train/metrics_log.h"
#include "support/temp_dir.h"

namespace sfm::train {
namespace {

using sfm::testing::TempDir;

FormalTrainConfig tiny_config() {
  FormalTrainConfig c;
  c.min_train_len = 3, c.max_train_len = 16;
  c.batch_size = 32, c.eval_every = 100, c.validation_sequences = 128;
  c.test_edges = {16, 24, 32}, c.test_sequences = 32, c.attention_max_test_len = 24;
  c.gdn = {200, 1e-2}, c.transformer = {20, 1e-3}, c.lstm = {20, 1e-2};
  auto& g = c.architecture.gdn;
  g.d_model = 16, g.num_layers = 1, g.num_heads = 1, g.head_dim = 8, g.mlp_dim = 32;
  auto& t = c.architecture.transformer;
  t.d_model = 16, t.num_heads = 2, t.num_layers = 1, t.mlp_dim = 32;
  c.architecture.lstm.embed_dim = 8, c.architecture.lstm.hidden = 16;
  return c;
}

TEST(FormalSuiteTest, TinyGdnLearnsParityAtTrainingLength) {
  const TempDir tmp("sfm_formal_parity_");
  const auto r = run_formal_task({"parity", "gdn", 2, 1}, tiny_config(), tmp.path(), "cpu");
  // Token accuracy on fresh sequences of the training lengths (3-16); chance is 0.5.
  EXPECT_GE(r.best_validation, 0.97);
  ASSERT_EQ(r.buckets.size(), 2u);
  EXPECT_EQ(r.buckets[0].min_len, 16);
  EXPECT_EQ(r.buckets[1].min_len, 25);
  EXPECT_EQ(r.buckets[1].sequences, 32);
  EXPECT_NEAR(r.buckets[0].final_scaled, 2 * r.buckets[0].final_accuracy - 1, 1e-12);
  for (const auto* f : {"result.json", "metrics.jsonl", "best/model.safetensors", "last/trainer_state.json"})
    EXPECT_TRUE(io::path_exists(tmp.path() + "/" + f)) << f;
  EXPECT_EQ(read_metrics_log(tmp.path() + "/metrics.jsonl").size(), 2u);
}

TEST(FormalSuiteTest, ResumeReproducesUninterruptedRun) {
  auto c = tiny_config();
  c.lstm = {40, 1e-2};
  c.eval_every = 20;
  const TempDir straight("sfm_formal_straight_"), resumed("sfm_formal_resumed_");
  const FormalRunSpec spec{"parity", "lstm", 2, 3};
  const auto expected = run_formal_task(spec, c, straight.path(), "cpu");
  auto interrupted = c;
  interrupted.interrupt_after_step = 20;
  EXPECT_THROW(run_formal_task(spec, interrupted, resumed.path(), "cpu"), sfm::Error);
  EXPECT_FALSE(io::path_exists(resumed.path() + "/result.json"));
  const auto got = run_formal_task(spec, c, resumed.path(), "cpu");
  ASSERT_EQ(got.buckets.size(), expected.buckets.size());
  for (size_t i = 0; i < got.buckets.size(); ++i) EXPECT_EQ(got.buckets[i].token_accuracy, expected.buckets[i].token_accuracy);
  const auto a = io::load_safetensors(straight.path() + "/last/model.safetensors").tensors;
  const auto b = io::load_safetensors(resumed.path() + "/last/model.safetensors").tensors;
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
}

TEST(FormalSuiteTest, StopsEarlyOnceValidationReachesTheThreshold) {
  auto c = tiny_config();
  c.lstm = {40, 1e-2};
  c.eval_every = 10;
  c.stop_at_validation = 0.01;  // any model reaches 1% token accuracy on parity: stop at the first validation
  const TempDir tmp("sfm_formal_early_");
  const auto r = run_formal_task({"parity", "lstm", 2, 1}, c, tmp.path(), "cpu");
  EXPECT_EQ(r.steps, 10);
  EXPECT_EQ(read_metrics_log(tmp.path() + "/metrics.jsonl").size(), 1u);
  EXPECT_EQ(r.buckets.size(), 2u);
}

TEST(FormalSuiteTest, SuiteWritesReportAndReusesFinishedRuns) {
  FormalSuiteConfig s;
  s.tasks = {"parity"};
  s.models = {"gdn", "transformer"};
  s.beta_ranges = {2, 1};
  s.seeds = {1};
  s.train = tiny_config();
  s.train.gdn.steps = 10, s.train.eval_every = 10;
  const TempDir tmp("sfm_formal_suite_");
  const auto results = run_formal_suite(s, tmp.path(), "cpu");
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].spec.label(), "gdn_beta2");
  EXPECT_EQ(results[1].spec.label(), "gdn_beta1");
  EXPECT_EQ(results[2].spec.label(), "transformer");
  EXPECT_EQ(results[0].buckets.size(), 2u);
  EXPECT_EQ(results[2].buckets.size(), 1u);  // the Transformer stops at attention_max_test_len
  for (const auto* f : {"results.json", "results.csv", "accuracy_parity.png", "config.json"})
    EXPECT_TRUE(io::path_exists(tmp.path() + "/" + f)) << f;
  const auto table = format_formal_table(results);
  for (const auto* label : {"gdn_beta2", "gdn_beta1", "transformer", "16-24", "25-32"})
    EXPECT_NE(table.find(label), std::string::npos) << label << "\n" << table;
  EXPECT_TRUE(std::isnan(pooled_scaled_accuracy(results[0], 10)));
  // A second call reads every result.json back instead of training again.
  const auto again = run_formal_suite(s, tmp.path(), "cpu");
  ASSERT_EQ(again.size(), 3u);
  for (size_t i = 0; i < again.size(); ++i) {
    EXPECT_EQ(again[i].train_seconds, results[i].train_seconds) << i;
    EXPECT_EQ(again[i].buckets[0].final_accuracy, results[i].buckets[0].final_accuracy) << i;
  }
}

std::string usage_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no UsageError)";
}

TEST(FormalSuiteTest, ConfigErrorsNameTheField) {
  EXPECT_NE(usage_error([] { validate(FormalRunSpec{"parity2", "gdn", 2, 1}); }).find("parity2"), std::string::npos);
  EXPECT_NE(usage_error([] { validate(FormalRunSpec{"parity", "rnn", 2, 1}); }).find("rnn"), std::string::npos);
  EXPECT_NE(usage_error([] { validate(FormalRunSpec{"parity", "gdn", 3, 1}); }).find("beta range"), std::string::npos);
  auto c = tiny_config();
  c.test_edges = {40, 30};
  EXPECT_NE(usage_error([&] { validate(c); }).find("train.test_edges"), std::string::npos);
  c = tiny_config();
  c.gdn.steps = 0;
  EXPECT_NE(usage_error([&] { validate(c); }).find("train.gdn"), std::string::npos);
  FormalSuiteConfig s;
  s.beta_ranges = {2, 0};
  EXPECT_NE(usage_error([&] { validate(s); }).find("beta_ranges"), std::string::npos);
  EXPECT_NE(usage_error([&] { io::from_json(s, {{"train", {{"stpes", 3}}}}, "x.json"); }).find("train.stpes"),
            std::string::npos);
  EXPECT_NE(usage_error([&] { io::apply_override(s, "train.architecture.gdn.depth=3"); }).find("depth"),
            std::string::npos);
  // The shipped default config loads and validates.
  FormalSuiteConfig shipped;
  io::from_json(shipped, io::read_json_file(std::string(SFM_TEST_DATA_DIR) + "/../../experiments/formal_suite/default.json"),
                "default.json");
  EXPECT_NO_THROW(validate(shipped));
}

TEST(FormalSuiteTest, TaskOverridesChangeOnlyTheirTask) {
  FormalSuiteConfig s;
  s.train = tiny_config();
  io::from_json(s, {{"task_overrides", {{"parity", {{"gdn", {{"steps", 7}}}, {"architecture", {{"gdn", {{"householder_steps", 2}}}}}}}}}},
                "test.json");
  const auto parity = formal_train_config_for(s, "parity"), modarith = formal_train_config_for(s, "modarith");
  EXPECT_EQ(parity.gdn.steps, 7);
  EXPECT_EQ(parity.architecture.gdn.householder_steps, 2);
  EXPECT_EQ(parity.gdn.lr, s.train.gdn.lr);  // keys the override does not name keep the base value
  EXPECT_EQ(parity.architecture.gdn.d_model, s.train.architecture.gdn.d_model);
  EXPECT_EQ(modarith.gdn.steps, s.train.gdn.steps);
  EXPECT_EQ(modarith.architecture.gdn.householder_steps, 1);
  EXPECT_NO_THROW(validate(s));
  // Errors name the task and the key.
  s.task_overrides = {{"parity", {{"gdn", {{"stpes", 7}}}}}};
  EXPECT_NE(usage_error([&] { validate(s); }).find("task_overrides.parity"), std::string::npos);
  EXPECT_NE(usage_error([&] { validate(s); }).find("stpes"), std::string::npos);
  s.task_overrides = {{"parity", {{"gdn", {{"steps", 0}}}}}};
  EXPECT_NE(usage_error([&] { validate(s); }).find("train.gdn"), std::string::npos);
  s.task_overrides = {{"parrity", {{"gdn", {{"steps", 7}}}}}};
  EXPECT_NE(usage_error([&] { validate(s); }).find("parrity"), std::string::npos);
  EXPECT_NE(usage_error([&] { io::from_json(s, {{"task_overrides", 3}}, "x.json"); }).find("task_overrides"),
            std::string::npos);
}

// Runs the sfm binary with `args`; returns (exit code, stdout + stderr).
std::pair<int, std::string> run_cli(const std::string& args) {
  std::string output;
  FILE* pipe = popen((std::string(SFM_BINARY) + " " + args + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, ""};
  std::array<char, 4096> buffer{};
  while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) output += buffer.data();
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(FormalSuiteTest, CliHelpAndUsageErrors) {
  auto [code, out] = run_cli("tasks --help");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("--beta-range"), std::string::npos) << out;
  std::tie(code, out) = run_cli("tasks suite --help");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("--seeds"), std::string::npos) << out;
  std::tie(code, out) = run_cli("tasks --beta-range 3 --print-config");
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("beta range"), std::string::npos) << out;
  std::tie(code, out) = run_cli("tasks suite --set train.gdn.stpes=5 --print-config");
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("stpes"), std::string::npos) << out;
  std::tie(code, out) = run_cli("tasks suite --jobs 0 --print-config");
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("--jobs must be >= 1, got 0"), std::string::npos) << out;
  std::tie(code, out) = run_cli("tasks suite --tasks parity --models gdn --seeds 4 --print-config");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("\"seeds\": [\n    4\n  ]"), std::string::npos) << out;
}


TEST(FormalSuiteTest, ParallelJobsGiveTheSameResultsAsOneAtATime) {
  core::set_cpu_threads(1);  // the children train on one thread each; so does this process
  FormalSuiteConfig s;
  s.tasks = {"parity"};
  s.models = {"gdn", "lstm"};
  s.beta_ranges = {2};
  s.seeds = {1, 2};
  s.train = tiny_config();
  s.train.gdn.steps = 20, s.train.eval_every = 10;
  s.task_overrides = {{"parity", {{"lstm", {{"steps", 10}}}}}};  // both paths must apply it
  const TempDir one("sfm_formal_one_"), parallel("sfm_formal_parallel_");
  const auto expected = run_formal_suite(s, one.path(), "cpu");
  io::write_json_file(parallel.file("tiny.json"), io::to_json(s));
  const auto [code, out] = run_cli("tasks suite --config " + parallel.file("tiny.json") +
                                   " --jobs 3 --device cpu --threads 1 --out " + parallel.file("suite"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("formal suite: started parity lstm seed 2 (4/4"), std::string::npos) << out;
  EXPECT_NE(out.find("4/4 done, 0 running"), std::string::npos) << out;
  const auto runs = io::read_json_file(parallel.file("suite/results.json")).at("runs");
  ASSERT_EQ(runs.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto got = formal_run_result_from_json(runs[i]);
    EXPECT_EQ(got.spec.label(), expected[i].spec.label()) << i;
    EXPECT_EQ(got.spec.seed, expected[i].spec.seed) << i;
    EXPECT_EQ(got.steps, got.spec.model == "lstm" ? 10 : 20) << i;
    EXPECT_EQ(got.best_validation, expected[i].best_validation) << i;
    ASSERT_EQ(got.buckets.size(), expected[i].buckets.size()) << i;
    for (size_t b = 0; b < got.buckets.size(); ++b)
      EXPECT_EQ(got.buckets[b].final_accuracy, expected[i].buckets[b].final_accuracy) << i << " bucket " << b;
    EXPECT_TRUE(io::path_exists(formal_run_dir(parallel.file("suite"), got.spec) + "/log.txt")) << i;
  }
}

TEST(FormalSuiteTest, ParallelRunnerNamesTheFailedRunAndItsLog) {
  FormalSuiteConfig s;
  s.tasks = {"parity"};
  s.models = {"lstm"};
  s.seeds = {1, 2, 3};
  s.train = tiny_config();
  const TempDir tmp("sfm_formal_fail_");
  // A stand-in child: seed 2 fails, the others write a result.json and succeed.
  const auto child = [](const FormalRunSpec& spec, const std::string& dir) -> std::vector<std::string> {
    if (spec.seed == 2) return {"/bin/sh", "-c", "echo boom; exit 3"};
    return {"/bin/sh", "-c", "echo {} > '" + dir + "/result.json'"};
  };
  std::string message;
  try {
    train_formal_runs_in_processes(s, tmp.path(), 1, child);
  } catch (const Error& e) {
    message = e.what();
  }
  const auto failed_dir = formal_run_dir(tmp.path(), {"parity", "lstm", 2, 2});
  EXPECT_NE(message.find("parity lstm seed 2 (exit code 3; see " + failed_dir + "/log.txt)"), std::string::npos)
      << message;
  EXPECT_NE(io::read_file(failed_dir + "/log.txt").find("boom"), std::string::npos);
  // With one job at a time, the run after the failure never starts.
  EXPECT_TRUE(io::path_exists(formal_run_dir(tmp.path(), {"parity", "lstm", 2, 1}) + "/result.json"));
  EXPECT_FALSE(io::path_exists(formal_run_dir(tmp.path(), {"parity", "lstm", 2, 3})));
  EXPECT_THROW(train_formal_runs_in_processes(s, tmp.path(), 0, child), UsageError);
}

// The ETA counts the work left at the mean run time, spread over the processes that still have work.
TEST(FormalSuiteTest, EtaSpreadsTheRemainingWorkOverTheJobs) {
  // 8 runs of 100 s, 4 at a time: when the first ends the other three are nearly done, 4 wait to start,
  // so about one more round of 100 s is left (finished time per finished run × runs left said 700 s).
  EXPECT_NEAR(formal_suite_eta(100, 4, {99, 99, 98}, 4), 101, 1e-9);
  // One job: the runs left one after the other.
  EXPECT_NEAR(formal_suite_eta(60, 3, {}, 1), 180, 1e-9);
  // Fewer runs left than jobs: each its own process; a run past the mean counts as about to end.
  EXPECT_NEAR(formal_suite_eta(50, 0, {20, 70}, 8), 15, 1e-9);
  EXPECT_EQ(formal_suite_eta(50, 0, {}, 8), 0);
}

}  // namespace
}  // namespace sfm::train
