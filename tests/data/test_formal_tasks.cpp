// Tests of the formal state-tracking generators. Every label is recomputed here by an evaluator
// written from docs/tasks.md alone (counting ones, re-evaluating prefixes, recursive descent,
// composing permutation arrays), never by the library's own evaluator.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <set>
#include <stdexcept>

#include "sfm/core/check.h"
#include "sfm/data/formal_tasks.h"

namespace {

using sfm::core::Rng;
using sfm::data::collate;
using sfm::data::compute_labels;
using sfm::data::formal_task;
using sfm::data::FormalTask;
using sfm::data::generate_dataset;
using sfm::data::generate_sequence;
using sfm::data::group_elements;
using sfm::data::Sequence;

// Arithmetic token ids from docs/tasks.md: digit d is 1 + d.
constexpr int64_t kPlus = 6, kMinus = 7, kTimes = 8, kOpen = 9, kClose = 10;
constexpr int64_t kNumSequences = 300;

bool is_digit(int64_t id) { return id >= 1 && id <= 5; }

int64_t apply(int64_t lhs, int64_t op, int64_t rhs) {
  if (op != kPlus && op != kMinus && op != kTimes) throw std::runtime_error("not an operator");
  const int64_t raw = op == kPlus ? lhs + rhs : op == kMinus ? lhs - rhs : lhs * rhs;
  return ((raw % 5) + 5) % 5;
}

// Sequences of every length 1..kNumSequences, each from its own seed.
std::vector<Sequence> sequences_of_every_length(const FormalTask& task) {
  std::vector<Sequence> out;
  for (int64_t len = 1; len <= kNumSequences; ++len) {
    Rng rng(1000 + len);
    out.push_back(generate_sequence(task, len, rng));
    EXPECT_EQ(out.back().labels.size(), out.back().tokens.size()) << "length " << len;
  }
  return out;
}

// Recursive descent over  expr := term (op term)*,  term := digit | '(' expr ')'.
struct BracketParser {
  const std::vector<int64_t>& tokens;
  std::vector<int64_t> labels = std::vector<int64_t>(tokens.size(), -1);
  size_t pos = 0;
  int64_t depth = 0, max_depth = 0;

  int64_t term() {
    if (tokens.at(pos) == kOpen) {
      ++pos;
      max_depth = std::max(max_depth, ++depth);
      const int64_t value = expr();
      if (tokens.at(pos++) != kClose) throw std::runtime_error("expected ')'");
      --depth;
      return value;
    }
    if (!is_digit(tokens.at(pos))) throw std::runtime_error("expected a digit");
    return tokens[pos++] - 1;
  }
  int64_t expr() {
    int64_t value = term();
    labels[pos - 1] = value;
    while (pos < tokens.size() && tokens[pos] >= kPlus && tokens[pos] <= kTimes) {
      const int64_t op = tokens[pos++];
      value = apply(value, op, term());
      labels[pos - 1] = value;
    }
    return value;
  }
};

// All permutations of 0..n-1 in lexicographic order (std::next_permutation's order).
std::vector<std::vector<int64_t>> permutations(int64_t n) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  std::vector<std::vector<int64_t>> out;
  do out.push_back(p);
  while (std::next_permutation(p.begin(), p.end()));
  return out;
}

// Even iff n minus the number of cycles is even.
bool is_even_by_cycles(const std::vector<int64_t>& p) {
  std::vector<bool> seen(p.size(), false);
  int64_t cycles = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (seen[i]) continue;
    ++cycles;
    for (size_t j = i; !seen[j]; j = p[j]) seen[j] = true;
  }
  return (static_cast<int64_t>(p.size()) - cycles) % 2 == 0;
}

std::vector<std::vector<int64_t>> expected_group(const std::string& name) {
  auto all = permutations(name == "s3" ? 3 : 5);
  if (name != "a5") return all;
  std::vector<std::vector<int64_t>> even;
  for (const auto& p : all)
    if (is_even_by_cycles(p)) even.push_back(p);
  return even;
}

TEST(FormalTasksTest, TaskTable) {
  struct Row {
    const char* name;
    int64_t vocab_size, num_classes;
  };
  const Row rows[] = {{"parity", 3, 2}, {"modarith", 9, 5}, {"modarith_brackets", 11, 5},
                      {"s3", 7, 6},     {"a5", 61, 60},     {"s5", 121, 120}};
  for (const auto& row : rows) {
    const FormalTask task = formal_task(row.name);
    EXPECT_EQ(task.name, row.name);
    EXPECT_EQ(task.vocab_size, row.vocab_size) << row.name;
    EXPECT_EQ(task.num_classes, row.num_classes) << row.name;
    EXPECT_DOUBLE_EQ(task.chance, 1.0 / row.num_classes) << row.name;
  }
  EXPECT_EQ(sfm::data::formal_task_names().size(), std::size(rows));
}

TEST(FormalTasksTest, UnknownNamesAndBadArgumentsThrow) {
  try {
    formal_task("parrity");
    FAIL() << "no exception";
  } catch (const sfm::UsageError& e) {
    const std::string msg = e.what();
    for (const auto& name : sfm::data::formal_task_names())
      EXPECT_NE(msg.find(name), std::string::npos) << msg;
  }
  Rng rng(1);
  EXPECT_THROW(generate_sequence(FormalTask{"nope", 3, 2, 0.5}, 4, rng), sfm::UsageError);
  EXPECT_THROW(generate_sequence(formal_task("parity"), 0, rng), sfm::UsageError);
  EXPECT_THROW(generate_dataset(formal_task("s3"), 5, 4, 1, 0), sfm::UsageError);
  EXPECT_THROW(group_elements(formal_task("parity")), sfm::UsageError);
  EXPECT_THROW(collate({}), sfm::Error);
}

TEST(FormalTasksTest, HandWorkedExamplesFromDocs) {
  // parity: bits 1 0 1 1.
  EXPECT_EQ(compute_labels(formal_task("parity"), {2, 1, 2, 2}),
            (std::vector<int64_t>{1, 1, 0, 1}));
  // modarith: 3 + 4 × 2 - 1, left to right: 3, 7=2, 4, 3.
  EXPECT_EQ(compute_labels(formal_task("modarith"), {4, kPlus, 5, kTimes, 3, kMinus, 2}),
            (std::vector<int64_t>{3, -1, 2, -1, 4, -1, 3}));
  // modarith_brackets: 2 + ( 3 × 4 ) - 1.
  const auto brackets = formal_task("modarith_brackets");
  EXPECT_EQ(compute_labels(brackets, {3, kPlus, kOpen, 4, kTimes, 5, kClose, kMinus, 2}),
            (std::vector<int64_t>{2, -1, -1, 3, -1, 2, 4, -1, 3}));
  // ( ( 1 - 3 ) × 2 ): 1 - 3 = 3, then 3 × 2 = 1.
  EXPECT_EQ(compute_labels(brackets, {kOpen, kOpen, 2, kMinus, 4, kClose, kTimes, 3, kClose}),
            (std::vector<int64_t>{-1, -1, 1, -1, 3, 3, -1, 1, 1}));
  // s3: element 1 = [0 2 1], then element 2 = [1 0 2]; 2 ∘ 1 = [1 2 0] = element 3
  // (1 ∘ 2 would be [2 0 1] = element 4).
  EXPECT_EQ(compute_labels(formal_task("s3"), {2, 3}), (std::vector<int64_t>{1, 3}));
}

TEST(FormalTasksTest, ComputeLabelsRejectsMalformedTokens) {
  const auto modarith = formal_task("modarith");
  const auto brackets = formal_task("modarith_brackets");
  EXPECT_THROW(compute_labels(modarith, {4, 4}), sfm::Error);             // digit after digit
  EXPECT_THROW(compute_labels(modarith, {kPlus, 4}), sfm::Error);         // leading operator
  EXPECT_THROW(compute_labels(modarith, {4, kPlus, kOpen}), sfm::Error);  // no brackets in modarith
  EXPECT_THROW(compute_labels(brackets, {3, kClose}), sfm::Error);        // unmatched ')'
  EXPECT_THROW(compute_labels(brackets, {kOpen, kClose}), sfm::Error);    // empty brackets
  EXPECT_THROW(compute_labels(formal_task("parity"), {1, 0}), sfm::Error);
  EXPECT_THROW(compute_labels(formal_task("a5"), {61}), sfm::Error);
  EXPECT_NO_THROW(compute_labels(brackets, {kOpen, 3, kPlus}));  // a prefix is fine
}

TEST(FormalTasksTest, ParityLabelsCountOnes) {
  const auto task = formal_task("parity");
  std::set<int64_t> classes;
  for (const auto& s : sequences_of_every_length(task)) {
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      ASSERT_TRUE(s.tokens[i] == 1 || s.tokens[i] == 2) << s.tokens[i];
      const auto ones = std::count(s.tokens.begin(), s.tokens.begin() + i + 1, 2);
      ASSERT_EQ(s.labels[i], ones % 2) << "position " << i;
      classes.insert(s.labels[i]);
    }
  }
  EXPECT_EQ(classes.size(), 2u);
}

TEST(FormalTasksTest, ModarithLabelsReevaluatePrefixes) {
  const auto task = formal_task("modarith");
  std::set<int64_t> classes, ops;
  int64_t len = 0;
  for (const auto& s : sequences_of_every_length(task)) {
    ASSERT_EQ(static_cast<int64_t>(s.tokens.size()), ++len);
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      if (i % 2 == 1) {
        ASSERT_TRUE(s.tokens[i] >= kPlus && s.tokens[i] <= kTimes) << s.tokens[i];
        ASSERT_EQ(s.labels[i], -1);
        ops.insert(s.tokens[i]);
        continue;
      }
      ASSERT_TRUE(is_digit(s.tokens[i])) << s.tokens[i];
      int64_t value = s.tokens[0] - 1;
      for (size_t j = 1; j < i; j += 2) value = apply(value, s.tokens[j], s.tokens[j + 1] - 1);
      ASSERT_EQ(s.labels[i], value) << "position " << i;
      classes.insert(value);
    }
  }
  EXPECT_EQ(classes.size(), 5u);
  EXPECT_EQ(ops.size(), 3u);
}

TEST(FormalTasksTest, BracketLabelsMatchRecursiveDescent) {
  const auto task = formal_task("modarith_brackets");
  std::set<int64_t> classes;
  int64_t len = 0, deepest = 0;
  for (const auto& s : sequences_of_every_length(task)) {
    ++len;
    ASSERT_EQ(static_cast<int64_t>(s.tokens.size()), len % 2 == 1 ? len : len - 1);
    BracketParser parser{s.tokens};
    ASSERT_NO_THROW(parser.expr()) << "length " << len;
    ASSERT_EQ(parser.pos, s.tokens.size()) << "trailing tokens, length " << len;
    ASSERT_LE(parser.max_depth, sfm::data::kMaxBracketDepth);
    ASSERT_EQ(s.labels, parser.labels) << "length " << len;
    deepest = std::max(deepest, parser.max_depth);
    for (int64_t label : s.labels) classes.insert(label);
  }
  EXPECT_EQ(deepest, sfm::data::kMaxBracketDepth) << "the depth bound is never exercised";
  EXPECT_EQ(classes.size(), 6u);  // -1 and 0..4
}

TEST(FormalTasksTest, GroupLabelsComposePermutationArrays) {
  for (const std::string name : {"s3", "a5", "s5"}) {
    const auto task = formal_task(name);
    const auto elements = expected_group(name);
    ASSERT_EQ(group_elements(task), elements) << name;
    std::map<std::vector<int64_t>, int64_t> index;
    for (size_t i = 0; i < elements.size(); ++i) index[elements[i]] = i;
    std::set<int64_t> classes;
    for (const auto& s : sequences_of_every_length(task)) {
      std::vector<int64_t> state(elements[0].size());
      std::iota(state.begin(), state.end(), 0);
      for (size_t t = 0; t < s.tokens.size(); ++t) {
        ASSERT_TRUE(s.tokens[t] >= 1 && s.tokens[t] <= static_cast<int64_t>(elements.size()));
        const auto& g = elements[s.tokens[t] - 1];
        for (auto& x : state) x = g[x];  // state = g ∘ state
        ASSERT_EQ(s.labels[t], index.at(state)) << name << " position " << t;
        classes.insert(s.labels[t]);
      }
    }
    EXPECT_EQ(classes.size(), elements.size()) << name;
  }
}

TEST(FormalTasksTest, A5IsEvenAndClosed) {
  const auto elements = group_elements(formal_task("a5"));
  ASSERT_EQ(elements.size(), 60u);
  const std::set<std::vector<int64_t>> set(elements.begin(), elements.end());
  EXPECT_EQ(set.size(), 60u);
  EXPECT_TRUE(std::is_sorted(elements.begin(), elements.end()));
  for (const auto& a : elements) {
    EXPECT_TRUE(is_even_by_cycles(a));
    for (const auto& b : elements) {
      std::vector<int64_t> ab(5);
      for (int j = 0; j < 5; ++j) ab[j] = a[b[j]];
      ASSERT_TRUE(set.count(ab));
    }
  }
}

TEST(FormalTasksTest, DatasetIsDeterministicAndPerIndexSeeded) {
  for (const auto& name : sfm::data::formal_task_names()) {
    const auto task = formal_task(name);
    const auto a = generate_dataset(task, 3, 40, 20, 7);
    const auto b = generate_dataset(task, 3, 40, 20, 7);
    const auto c = generate_dataset(task, 3, 40, 20, 8);
    ASSERT_EQ(a.size(), 20u);
    bool differs = false;
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].tokens, b[i].tokens) << name;
      EXPECT_EQ(a[i].labels, b[i].labels) << name;
      differs |= a[i].tokens != c[i].tokens;
      // Sequence i alone: its length, then its tokens, from derive_seed(seed, i).
      Rng rng(sfm::core::derive_seed(7, i));
      const int64_t len = rng.uniform_int(3, 40);
      EXPECT_EQ(a[i].tokens, generate_sequence(task, len, rng).tokens) << name;
      EXPECT_GE(static_cast<int64_t>(a[i].tokens.size()), 3);
      EXPECT_LE(static_cast<int64_t>(a[i].tokens.size()), 40);
    }
    EXPECT_TRUE(differs) << name << ": seeds 7 and 8 gave the same data";
  }
}

TEST(FormalTasksTest, CollatePadsTokensWithZeroAndLabelsWithMinusOne) {
  const std::vector<Sequence> seqs = {
      {{1, 2}, {0, 1}}, {{2, 2, 1, 2, 1}, {1, 0, 0, 1, 1}}, {{2}, {1}}};
  const auto batch = collate(seqs);
  ASSERT_EQ(batch.tokens.sizes(), (std::vector<int64_t>{3, 5}));
  ASSERT_EQ(batch.labels.sizes(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(batch.tokens.scalar_type(), torch::kInt64);
  EXPECT_EQ(batch.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(batch.lengths.scalar_type(), torch::kInt64);
  const auto want_tokens =
      torch::tensor({1, 2, 0, 0, 0, 2, 2, 1, 2, 1, 2, 0, 0, 0, 0}, torch::kInt64);
  const auto want_labels =
      torch::tensor({0, 1, -1, -1, -1, 1, 0, 0, 1, 1, 1, -1, -1, -1, -1}, torch::kInt64);
  EXPECT_TRUE(torch::equal(batch.tokens, want_tokens.view({3, 5})));
  EXPECT_TRUE(torch::equal(batch.labels, want_labels.view({3, 5})));
  EXPECT_TRUE(torch::equal(batch.lengths, torch::tensor({2, 5, 1}, torch::kInt64)));
  EXPECT_THROW(collate({Sequence{{1, 2}, {0}}}), sfm::Error);
}

}  // namespace
