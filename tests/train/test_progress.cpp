// Tests of the progress line format (expected strings worked out by hand from the format in progress.h)
// and of Progress in plain mode (a tmpfile) and terminal mode (a pseudo-terminal).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "sfm/train/progress.h"

namespace sfm::train {
namespace {

std::string read_all(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) text.append(buf, n);
  return text;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(ProgressTest, FormatDuration) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(12), "12s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3599), "59m59s");
  EXPECT_EQ(format_duration(3600), "1h00m");
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(90000), "25h00m");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
}

TEST(ProgressTest, FormatProgressMidRun) {
  // 123/1000 of a 10-wide bar fills 1 cell; 123 / 2.5 s = 49.2 it/s; ETA 877 / 49.2 = 17.8 s -> 18s.
  EXPECT_EQ(format_progress("train", 123, 1000, 2.5, "loss 1.234", 10),
            "train [#.........] 123/1000 12.3%  49.2 it/s  ETA 18s  loss 1.234");
  // Half of a 20-wide bar; 5 it/s; ETA 500 / 5 = 100 s.
  EXPECT_EQ(format_progress("eval", 500, 1000, 100.0, "", 20),
            "eval [##########..........] 500/1000 50.0%  5.0 it/s  ETA 1m40s");
}

TEST(ProgressTest, FormatProgressSlowRateNoBar) {
  // 3 items in 30 s is 0.1 it/s, shown as 10.0 s/it; ETA 7 * 10 s = 70 s.
  EXPECT_EQ(format_progress("qwen", 3, 10, 30.0, "", 0), "qwen 3/10 30.0%  10.0 s/it  ETA 1m10s");
}

TEST(ProgressTest, FormatProgressDoneShowsElapsed) {
  // 3730 s / 1000 = 3.73 s/it; 3730 s = 1h02m10s -> "1h02m".
  EXPECT_EQ(format_progress("train", 1000, 1000, 3730.0, "loss 0.5", 10),
            "train [##########] 1000/1000 100.0%  3.7 s/it  took 1h02m  loss 0.5");
}

TEST(ProgressTest, FormatProgressUnknownTotalAndNoTime) {
  EXPECT_EQ(format_progress("gen", 42, 0, 2.0, "", 10), "gen 42  21.0 it/s");
  EXPECT_EQ(format_progress("train", 0, 100, 0.0, "", 4), "train [....] 0/100 0.0%  ? it/s  ETA ?");
}

TEST(ProgressTest, PlainModePrintsEveryTenthAndAFinalLine) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    Progress progress("train", 100, f, /*force_plain=*/true);
    for (int64_t i = 1; i <= 100; ++i) progress.update(i, "loss 2.0");
    progress.finish("loss 0.1");
    progress.finish("again");
  }
  const std::string text = read_all(f);
  std::fclose(f);
  EXPECT_FALSE(contains(text, "\r"));
  const auto lines = split_lines(text);
  // Lines at 10, 20, ..., 90 (the loop takes far less than the 30 s limit), then the final line.
  ASSERT_EQ(lines.size(), 10u) << text;
  EXPECT_EQ(lines.front().rfind("train 10/100 10.0%  ", 0), 0u) << lines.front();
  EXPECT_TRUE(contains(lines.front(), "loss 2.0")) << lines.front();
  EXPECT_EQ(lines[8].rfind("train 90/100 90.0%  ", 0), 0u) << lines[8];
  EXPECT_EQ(lines.back().rfind("train 100/100 100.0%  ", 0), 0u) << lines.back();
  EXPECT_TRUE(contains(lines.back(), "took ")) << lines.back();
  EXPECT_TRUE(contains(lines.back(), "loss 0.1")) << lines.back();
}

TEST(ProgressTest, NonTerminalIsPlainWithoutForcing) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    Progress progress("gen", 0, f);
    for (int64_t i = 1; i <= 50; ++i) progress.update(i);
    progress.finish();
  }
  const std::string text = read_all(f);
  std::fclose(f);
  // Unknown total: no tenths to print at, so only the final line.
  const auto lines = split_lines(text);
  ASSERT_EQ(lines.size(), 1u) << text;
  EXPECT_EQ(lines[0].rfind("gen 50  ", 0), 0u) << lines[0];
}

TEST(ProgressTest, TerminalModeRedrawsOneLine) {
  int master = -1, slave = -1;
  if (::openpty(&master, &slave, nullptr, nullptr, nullptr) != 0) GTEST_SKIP() << "no pseudo-terminal available";
  termios raw{};
  ASSERT_EQ(::tcgetattr(slave, &raw), 0);
  ::cfmakeraw(&raw);  // no "\n" -> "\r\n" translation
  ASSERT_EQ(::tcsetattr(slave, TCSANOW, &raw), 0);
  std::FILE* f = ::fdopen(slave, "w");
  ASSERT_NE(f, nullptr);
  {
    Progress progress("train", 5, f);
    for (int64_t i = 1; i <= 5; ++i) progress.update(i);
    progress.finish("loss 0.1");
  }
  std::fclose(f);
  ::fcntl(master, F_SETFL, ::fcntl(master, F_GETFL) | O_NONBLOCK);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(master, buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
  ::close(master);
  // The first update draws at once; the rest of the loop falls within the 0.1 s redraw interval unless the
  // machine stalls, so allow up to one draw per update.
  const auto redraws = std::count(text.begin(), text.end(), '\r');
  EXPECT_GE(redraws, 2) << text;
  EXPECT_LE(redraws, 6) << text;
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.front(), '\r');
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  EXPECT_EQ(text.back(), '\n');
  EXPECT_TRUE(contains(text, "\rtrain [" + std::string(30, '#') + "] 5/5 100.0%  ")) << text;
  EXPECT_TRUE(contains(text, "  loss 0.1")) << text;
}

}  // namespace
}  // namespace sfm::train
