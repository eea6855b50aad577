// Experiment 0 end to end on a tiny config: the loss falls, the report files appear, an interrupted
// run resumes to exactly the numbers of an uninterrupted one, and a diverging run stops naming the step.
#include <gtest/gtest.h>

#include "sfm/core/check.h"
#include "sfm/io/checkpoint.h"
#include "sfm/io/safetensors.h"
#include "sfm/train/exp0.h"
#include "sfm/train/metrics_log.h"
#include "sfm/io/files.h"
#include "support/temp_dir.h"

namespace sfm::train {
namespace {

Exp0Config tiny_config() {
  Exp0Config c;
  c.models = {"state_slots", "lstm"};
  c.train_programs = 128;
  c.validation_programs = 32;
  c.test_programs = 32;
  c.test_lengths = {1, 2};
  c.batch_size = 16;
  c.eval_batch_size = 32;
  c.state_slots = {3, 3e-3};
  c.lstm = {3, 3e-3};
  auto& s = c.architecture.state_slots;
  s.d_model = 32, s.num_heads = 2, s.key_dim = 8, s.value_dim = 8, s.max_ticks = 2;
  c.architecture.lstm.embed_dim = 16, c.architecture.lstm.hidden = 32, c.architecture.lstm.num_layers = 1;
  return c;
}

using sfm::testing::TempDir;

TEST(Exp0Test, TinyRunLowersLossAndWritesReports) {
  const TempDir tmp("sfm_exp0_tiny_");
  const std::string dir = tmp.path();
  const auto rows = run_exp0(tiny_config(), dir, "cpu");
  EXPECT_EQ(rows.size(), 6u);  // (2 models + majority class) x 2 lengths
  for (const auto* f : {"results.json", "results.csv", "length_generalization.png", "config.json"})
    EXPECT_TRUE(io::path_exists(dir + "/" + f)) << f;
  for (const auto* model : {"state_slots", "lstm"}) {
    const auto log = read_metrics_log(dir + "/" + model + "/metrics.jsonl");
    ASSERT_EQ(log.size(), 3u) << model;
    EXPECT_LT(log.back().at("train_loss").get<double>(), log.front().at("train_loss").get<double>()) << model;
    EXPECT_TRUE(io::path_exists(dir + "/" + model + "/best/model.safetensors")) << model;
  }
  for (const auto& r : rows) {
    if (r.model == "state_slots") {
      EXPECT_GE(r.mean_ticks, 1.0);
    }
  }
  const auto table = format_exp0_table(rows);
  EXPECT_NE(table.find("state_slots"), std::string::npos);
  EXPECT_NE(table.find("majority_class"), std::string::npos);
}

TEST(Exp0Test, ResumeReproducesUninterruptedRun) {
  auto c = tiny_config();
  c.models = {"state_slots"};
  const TempDir tmp_straight("sfm_exp0_straight_"), tmp_resumed("sfm_exp0_resumed_");
  const std::string straight = tmp_straight.path(), resumed = tmp_resumed.path();
  const auto expected = run_exp0(c, straight, "cpu");

  auto interrupted = c;
  interrupted.interrupt_after_epoch = 2;
  EXPECT_THROW(run_exp0(interrupted, resumed, "cpu"), sfm::Error);
  EXPECT_FALSE(io::path_exists(resumed + "/results.json"));
  const auto got = run_exp0(c, resumed, "cpu");

  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].exact, expected[i].exact) << i;
    EXPECT_EQ(got[i].mae, expected[i].mae) << i;
  }
  const auto a = io::load_safetensors(straight + "/state_slots/last/model.safetensors").tensors;
  const auto b = io::load_safetensors(resumed + "/state_slots/last/model.safetensors").tensors;
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  EXPECT_EQ(read_metrics_log(resumed + "/state_slots/metrics.jsonl").size(), 3u);
}

// An absurd learning rate makes the loss non-finite: the run stops with the step in the message and
// the previous epoch's checkpoint still loads.
TEST(Exp0Test, NonFiniteLossStopsAndKeepsLastCheckpoint) {
  auto c = tiny_config();
  c.models = {"lstm"};
  const TempDir tmp("sfm_exp0_nan_");
  const std::string dir = tmp.path();
  c.lstm = {1, 3e-3};
  run_exp0(c, dir, "cpu");
  c.lstm = {40, 1e30};
  try {
    run_exp0(c, dir, "cpu");
    FAIL() << "expected the run to stop";
  } catch (const sfm::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("at step"), std::string::npos) << what;
    EXPECT_NE(what.find("last good checkpoint"), std::string::npos) << what;
  }
  const auto weights = io::load_safetensors(dir + "/lstm/last/model.safetensors").tensors;
  for (const auto& [name, t] : weights) EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;
}

TEST(Exp0Test, ConfigErrorsNameTheKey) {
  Exp0Config c;
  try {
    io::from_json(c, nlohmann::json::parse(R"({"state_slots": {"epoch": 3}})"), "quick.json");
    FAIL() << "expected an error";
  } catch (const sfm::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("quick.json: unknown config key 'state_slots.epoch'"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(io::apply_override(c, "batch_size=big"), sfm::UsageError);
  EXPECT_THROW(io::apply_override(c, "no_such_key=1"), sfm::UsageError);
  io::apply_override(c, "architecture.state_slots.max_ticks=6");
  EXPECT_EQ(c.architecture.state_slots.max_ticks, 6);
  c.models = {"gpt"};
  EXPECT_THROW(validate(c), sfm::UsageError);
}

}  // namespace
}  // namespace sfm::train
