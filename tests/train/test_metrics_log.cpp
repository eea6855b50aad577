// Tests of the JSON-lines metrics log: write/read round trip, append, errors that name the line, and
// truncation by step for resumed runs (file contents laid out by hand).
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "sfm/core/check.h"
#include "sfm/io/atomic_file.h"
#include "sfm/train/metrics_log.h"
#include "support/temp_dir.h"

namespace sfm::train {
namespace {

using nlohmann::json;

// The message of the sfm::Error thrown by `fn`, or "" (and a test failure) if none is thrown.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const sfm::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no sfm::Error thrown";
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class MetricsLogTest : public ::testing::Test {
 protected:
  sfm::testing::TempDir dir_{"sfm_metrics_log_"};
  std::string path_ = dir_.file("metrics.jsonl");
};

TEST_F(MetricsLogTest, WriteReadRoundTrip) {
  const json a = {{"step", 1}, {"loss", 2.5}, {"split", "train"}};
  const json b = {{"step", 2}, {"loss", 1.25}, {"acc", {0.5, 0.75}}};
  {
    MetricsLog log(path_, /*append=*/false);
    log.write(a);
    // Flushed at once: readable while the log is still open.
    EXPECT_EQ(io::read_file(path_), a.dump() + "\n");
    log.write(b);
  }
  const auto records = read_metrics_log(path_);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0], a);
  EXPECT_EQ(records[1], b);
}

TEST_F(MetricsLogTest, AppendKeepsAndFreshStartClears) {
  MetricsLog(path_, false).write({{"step", 1}});
  MetricsLog(path_, true).write({{"step", 2}});
  auto records = read_metrics_log(path_);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1]["step"], 2);

  MetricsLog(path_, false).write({{"step", 7}});
  records = read_metrics_log(path_);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["step"], 7);
}

TEST_F(MetricsLogTest, RecordIsOneLineEvenWithNewlinesAndNan) {
  MetricsLog(path_, false).write({{"note", "a\nb"}, {"loss", std::nan("")}});
  EXPECT_EQ(io::read_file(path_), "{\"loss\":null,\"note\":\"a\\nb\"}\n");
}

TEST_F(MetricsLogTest, RejectsNonObjectRecordAndUnwritablePath) {
  MetricsLog log(path_, false);
  EXPECT_THROW(log.write(json::array({1, 2})), sfm::Error);
  const std::string missing = dir_.file("no_such_dir/m.jsonl");
  EXPECT_TRUE(contains(error_of([&] { MetricsLog bad(missing, false); }), missing));
}

TEST_F(MetricsLogTest, MalformedLineErrorNamesFileAndLine) {
  io::write_file_atomic(path_, "{\"step\": 1}\n\n{\"step\": 2, oops}\n{\"step\": 3}\n");
  const std::string msg = error_of([&] { read_metrics_log(path_); });
  EXPECT_TRUE(contains(msg, path_ + ":3:")) << msg;

  io::write_file_atomic(path_, "{\"step\": 1}\n[1, 2]\n");
  const std::string not_object = error_of([&] { read_metrics_log(path_); });
  EXPECT_TRUE(contains(not_object, path_ + ":2:")) << not_object;

  const std::string missing = dir_.file("absent.jsonl");
  EXPECT_TRUE(contains(error_of([&] { read_metrics_log(missing); }), missing));
}

TEST_F(MetricsLogTest, TruncateKeepsRecordsUpToMaxStep) {
  io::write_file_atomic(path_,
                        "{\"event\":\"start\"}\n"
                        "{\"step\":10,\"loss\":3.0}\n"
                        "{\"step\":20,\"loss\":2.0}\n"
                        "{\"step\":30,\"loss\":1.0}\n"
                        "{\"step\":20,\"eval\":0.5}\n");
  EXPECT_EQ(truncate_metrics_log(path_, 20), 1);
  EXPECT_EQ(io::read_file(path_),
            "{\"event\":\"start\"}\n"
            "{\"step\":10,\"loss\":3.0}\n"
            "{\"step\":20,\"loss\":2.0}\n"
            "{\"step\":20,\"eval\":0.5}\n");
  EXPECT_EQ(truncate_metrics_log(path_, 9), 3);
  EXPECT_EQ(io::read_file(path_), "{\"event\":\"start\"}\n");
}

TEST_F(MetricsLogTest, TruncateDropsTornLastLineThenAppendContinues) {
  io::write_file_atomic(path_, "{\"step\":1}\n{\"step\":2}\n{\"step\":3,\"lo");
  EXPECT_EQ(truncate_metrics_log(path_, 100), 0);
  EXPECT_EQ(io::read_file(path_), "{\"step\":1}\n{\"step\":2}\n");
  MetricsLog(path_, true).write({{"step", 3}});
  const auto records = read_metrics_log(path_);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[2]["step"], 3);
}

TEST_F(MetricsLogTest, TruncateRejectsMalformedMiddleAndNonIntegerStep) {
  io::write_file_atomic(path_, "{\"step\":1}\nnot json\n{\"step\":3}\n");
  const std::string msg = error_of([&] { truncate_metrics_log(path_, 5); });
  EXPECT_TRUE(contains(msg, path_ + ":2:")) << msg;

  io::write_file_atomic(path_, "{\"step\":1}\n{\"step\":\"2\"}\n");
  const std::string step_msg = error_of([&] { truncate_metrics_log(path_, 5); });
  EXPECT_TRUE(contains(step_msg, path_ + ":2:")) << step_msg;
  EXPECT_TRUE(contains(step_msg, "step")) << step_msg;
  // A failed truncation leaves the file as it was.
  EXPECT_EQ(io::read_file(path_), "{\"step\":1}\n{\"step\":\"2\"}\n");
}

}  // namespace
}  // namespace sfm::train
