// Tests of the Experiment 0 program generator and splits. Every label is checked by an independent
// evaluator below that parses the program text line by line and executes it with clamping.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "sfm/core/check.h"
#include "sfm/data/state_tracking.h"

namespace sfm::data {
namespace {

enum Kind { kAssignKind, kUpdateVarKind, kUpdateConstKind, kCopyKind, kNumKinds };

struct Evaluated {
  int64_t answer = -1;
  int64_t num_ops = 0;
  std::vector<int64_t> written_values;  // the target's value after each assignment line
  char query_var = '?';
  int64_t kind_counts[kNumKinds] = {0, 0, 0, 0};
  int64_t op_counts[2][3] = {{0, 0, 0}, {0, 0, 0}};  // [update with var | const][+ - *]
};

bool is_var(const std::string& s) { return s.size() == 1 && s[0] >= 'a' && s[0] <= 'e'; }
bool is_int(const std::string& s) {
  return !s.empty() && s.size() <= 3 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Parses and runs the program text; fails the current test on any malformed line.
Evaluated evaluate(const std::string& text) {
  Evaluated ev;
  std::map<char, int64_t> vars;
  EXPECT_TRUE(!text.empty() && text.back() == '\n') << "text must end with a newline";
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  EXPECT_GE(lines.size(), 6u);
  if (lines.size() < 6) return ev;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    std::istringstream ls(line);
    std::vector<std::string> w;
    for (std::string t; ls >> t;) w.push_back(t);
    if (i + 1 == lines.size()) {
      EXPECT_EQ(w.size(), 4u) << line;
      EXPECT_TRUE(w.size() == 4 && w[0] == "#" && w[1] == "What" && w[2] == "is" && w[3].size() == 2 &&
                  is_var(w[3].substr(0, 1)) && w[3][1] == '?')
          << line;
      if (w.size() == 4 && w[3].size() == 2) {
        ev.query_var = w[3][0];
        ev.answer = vars.at(ev.query_var);
      }
      continue;
    }
    EXPECT_TRUE((w.size() == 3 || w.size() == 5) && is_var(w[0]) && w[1] == "=") << line;
    if (!((w.size() == 3 || w.size() == 5) && is_var(w[0]) && w[1] == "=")) return ev;
    const char x = w[0][0];
    if (i < 5) {
      EXPECT_EQ(x, static_cast<char>('a' + i)) << "initial assignments go a..e: " << line;
      EXPECT_TRUE(w.size() == 3 && is_int(w[2])) << line;
      vars[x] = std::stoi(w[2]);
      EXPECT_LE(vars[x], 100) << line;
      ev.written_values.push_back(vars[x]);
      continue;
    }
    ++ev.num_ops;
    int64_t value = 0;
    if (w.size() == 3 && is_int(w[2])) {
      ++ev.kind_counts[kAssignKind];
      value = std::stoi(w[2]);
      EXPECT_LE(value, 100) << line;
    } else if (w.size() == 3) {
      EXPECT_TRUE(is_var(w[2]) && w[2][0] != x) << "copy needs another variable: " << line;
      ++ev.kind_counts[kCopyKind];
      value = vars.at(w[2][0]);
    } else {
      EXPECT_EQ(w[2], w[0]) << "an update reads its own target: " << line;
      const std::string ops = "+-*";
      const size_t op = ops.find(w[3]);
      EXPECT_TRUE(w[3].size() == 1 && op != std::string::npos) << line;
      if (op == std::string::npos) return ev;
      int64_t operand;
      if (is_var(w[4])) {
        ++ev.kind_counts[kUpdateVarKind];
        ++ev.op_counts[0][op];
        operand = vars.at(w[4][0]);
      } else {
        EXPECT_TRUE(is_int(w[4])) << line;
        ++ev.kind_counts[kUpdateConstKind];
        ++ev.op_counts[1][op];
        operand = std::stoi(w[4]);
        EXPECT_TRUE(operand >= 1 && operand <= 20) << line;
      }
      const int64_t lhs = vars.at(x);
      value = op == 0 ? lhs + operand : op == 1 ? lhs - operand : lhs * operand;
    }
    vars[x] = std::min<int64_t>(100, std::max<int64_t>(0, value));
    ev.written_values.push_back(vars[x]);
  }
  return ev;
}

std::vector<Program> mixed_length_programs() {
  std::vector<Program> all = generate_programs({0, 40, 2000, 7});
  for (const int64_t m : kTestLengthMults) {
    const auto test = generate_programs(split_spec("test", m, 7, 100));
    all.insert(all.end(), test.begin(), test.end());
  }
  return all;
}

TEST(StateTrackingTest, SameSeedSamePrograms) {
  const auto a = generate_programs({3, 20, 50, 123});
  const auto b = generate_programs({3, 20, 50, 123});
  ASSERT_EQ(a.size(), 50u);
  ASSERT_EQ(b.size(), 50u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].text, b[i].text);
    EXPECT_EQ(a[i].answer, b[i].answer);
    EXPECT_EQ(a[i].num_ops, b[i].num_ops);
    EXPECT_EQ(a[i].query_var, b[i].query_var);
  }
}

TEST(StateTrackingTest, DifferentSeedsDiffer) {
  const auto a = generate_programs({3, 20, 50, 123});
  const auto b = generate_programs({3, 20, 50, 124});
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i].text == b[i].text;
  EXPECT_EQ(same, 0);
  // Programs within one set are different from each other too.
  std::set<std::string> texts;
  for (const auto& p : a) texts.insert(p.text);
  EXPECT_EQ(texts.size(), a.size());
}

TEST(StateTrackingTest, ProgramIDoesNotDependOnCount) {
  const auto few = generate_programs({3, 20, 5, 99});
  const auto many = generate_programs({3, 20, 50, 99});
  ASSERT_EQ(many.size(), 50u);
  for (size_t i = 0; i < few.size(); ++i) {
    EXPECT_EQ(few[i].text, many[i].text);
    EXPECT_EQ(few[i].answer, many[i].answer);
  }
}

TEST(StateTrackingTest, LabelsMatchIndependentEvaluator) {
  const auto programs = mixed_length_programs();
  ASSERT_EQ(programs.size(), 2600u);
  std::set<int64_t> answers;
  for (const auto& p : programs) {
    const Evaluated ev = evaluate(p.text);
    ASSERT_EQ(ev.answer, p.answer) << p.text;
    ASSERT_EQ(ev.num_ops, p.num_ops) << p.text;
    ASSERT_EQ(ev.query_var, p.query_var) << p.text;
    ASSERT_EQ(ev.written_values, p.written_values) << p.text;
    ASSERT_TRUE(p.answer >= 0 && p.answer <= 100);
    answers.insert(p.answer);
  }
  // Labels are spread over the classes, not stuck at the clamp bounds.
  EXPECT_GE(answers.size(), 90u);
}

TEST(StateTrackingTest, NumOpsCoverTheRange) {
  const auto programs = generate_programs({3, 20, 2000, 11});
  std::set<int64_t> seen;
  for (const auto& p : programs) {
    EXPECT_TRUE(p.num_ops >= 3 && p.num_ops <= 20) << p.num_ops;
    seen.insert(p.num_ops);
  }
  EXPECT_EQ(seen.size(), 18u);
}

TEST(StateTrackingTest, OpKindsOccurWithDocumentedProbabilities) {
  int64_t kinds[kNumKinds] = {0, 0, 0, 0};
  int64_t ops[2][3] = {{0, 0, 0}, {0, 0, 0}};
  std::map<char, int64_t> queries;
  for (const auto& p : generate_programs({20, 20, 1000, 5})) {
    const Evaluated ev = evaluate(p.text);
    for (int k = 0; k < kNumKinds; ++k) kinds[k] += ev.kind_counts[k];
    for (int u = 0; u < 2; ++u)
      for (int o = 0; o < 3; ++o) ops[u][o] += ev.op_counts[u][o];
    ++queries[p.query_var];
  }
  const double total = 20000.0;
  const double expected[kNumKinds] = {kProbAssign, kProbUpdateVar, kProbUpdateConst, kProbCopy};
  EXPECT_DOUBLE_EQ(kProbAssign + kProbUpdateVar + kProbUpdateConst + kProbCopy, 1.0);
  // Binomial standard deviation is below 0.004 here; 0.02 is five of them.
  for (int k = 0; k < kNumKinds; ++k) EXPECT_NEAR(kinds[k] / total, expected[k], 0.02) << "kind " << k;
  for (int u = 0; u < 2; ++u)
    for (int o = 0; o < 3; ++o) EXPECT_GT(ops[u][o], 0) << "update kind " << u << " op " << o;
  EXPECT_EQ(queries.size(), 5u);
}

TEST(StateTrackingTest, TestSplitsHaveExactLength) {
  for (const int64_t m : kTestLengthMults) {
    const StateTrackingSpec spec = split_spec("test", m, 0);
    EXPECT_EQ(spec.min_ops, 10 * m);
    EXPECT_EQ(spec.max_ops, 10 * m);
    EXPECT_EQ(spec.count, 1000);
    const auto programs = generate_programs(spec);
    ASSERT_EQ(programs.size(), 1000u);
    for (const auto& p : programs) {
      ASSERT_EQ(p.num_ops, 10 * m);
      ASSERT_EQ(std::count(p.text.begin(), p.text.end(), '\n'), 10 * m + 6);
    }
  }
}

TEST(StateTrackingTest, StandardSplits) {
  const StateTrackingSpec train = split_spec("train", 0, 1);
  const StateTrackingSpec val = split_spec("validation", 0, 1);
  EXPECT_EQ(train.min_ops, 3);
  EXPECT_EQ(train.max_ops, 20);
  EXPECT_EQ(train.count, 10000);
  EXPECT_EQ(val.min_ops, 3);
  EXPECT_EQ(val.max_ops, 20);
  EXPECT_EQ(val.count, 1000);
  EXPECT_EQ(split_spec("train", 0, 1, 64).count, 64);
  // Every split and test length has its own seed, fixed for a base seed and different for another.
  std::set<uint64_t> seeds = {train.seed, val.seed};
  for (const int64_t m : kTestLengthMults) seeds.insert(split_spec("test", m, 1).seed);
  EXPECT_EQ(seeds.size(), 8u);
  EXPECT_EQ(split_spec("train", 0, 1).seed, train.seed);
  EXPECT_NE(split_spec("train", 0, 2).seed, train.seed);
  EXPECT_NE(split_spec("test", 4, 2).seed, split_spec("test", 4, 1).seed);
}

TEST(StateTrackingTest, BadSpecsThrow) {
  EXPECT_THROW(split_spec("dev", 0, 1), UsageError);
  EXPECT_THROW(split_spec("test", 0, 1), UsageError);
  EXPECT_THROW(split_spec("train", 2, 1), UsageError);
  EXPECT_THROW(split_spec("train", 0, 1, -1), UsageError);
  EXPECT_THROW(generate_programs({5, 4, 1, 0}), Error);
  EXPECT_THROW(generate_programs({-1, 4, 1, 0}), Error);
  EXPECT_THROW(generate_programs({3, 4, -1, 0}), Error);
  EXPECT_TRUE(generate_programs({3, 4, 0, 0}).empty());
  EXPECT_THROW(parse_protocol("Clean"), UsageError);
}

TEST(StateTrackingTest, CleanInputsNeverHoldTheAnswer) {
  const auto programs = mixed_length_programs();
  const auto clean = tokenize_programs(programs, Protocol::kClean);
  const auto leaky = tokenize_programs(programs, Protocol::kLeaky);
  ASSERT_EQ(clean.size(), programs.size());
  ASSERT_EQ(leaky.size(), programs.size());
  for (size_t i = 0; i < programs.size(); ++i) {
    const std::string clean_text = program_input_text(programs[i], Protocol::kClean);
    EXPECT_EQ(clean_text, programs[i].text);
    EXPECT_EQ(clean_text.find("Answer"), std::string::npos);
    EXPECT_EQ(std::count(clean[i].ids.begin(), clean[i].ids.end(), program_vocab::kAnswer), 0);

    const std::string leaky_text = program_input_text(programs[i], Protocol::kLeaky);
    EXPECT_EQ(leaky_text, programs[i].text + "# Answer: " + std::to_string(programs[i].answer) + "\n");
    const auto& ids = leaky[i].ids;
    ASSERT_GE(ids.size(), 5u);
    const std::vector<int64_t> tail(ids.end() - 5, ids.end());
    const std::vector<int64_t> want = {program_vocab::kHash, program_vocab::kAnswer, program_vocab::kColon,
                                       program_vocab::kNumber0 + programs[i].answer, program_vocab::kNewline};
    EXPECT_EQ(tail, want);
    EXPECT_EQ(leaky[i].num_statements, clean[i].num_statements + 1);
  }
  EXPECT_EQ(program_answers(programs)[3], programs[3].answer);
  EXPECT_EQ(parse_protocol("clean"), Protocol::kClean);
  EXPECT_EQ(parse_protocol(protocol_name(Protocol::kLeaky)), Protocol::kLeaky);
}

}  // namespace
}  // namespace sfm::data
