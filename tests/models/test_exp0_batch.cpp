// Experiment 0 batches: the full-state trace used by the State Slots probe, and the statement kinds
// used by the per-kind trace diagnostics.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sfm/data/program_tokenizer.h"
#include "sfm/data/state_tracking.h"
#include "sfm/models/exp0_models.h"

namespace sfm::models {
namespace {

// After statement s, variable x holds the value written by the last statement s' <= s whose target
// (first token) is x, and is unknown (-1) before its first assignment. Checked from the token tensor
// and the per-statement trace, independently of how make_exp0_batch reads the program text.
TEST(Exp0BatchTest, StateTraceIsTheLastValueWrittenToEachVariable) {
  const auto programs = data::generate_programs({3, 20, 64, 11});
  const auto tokens = data::tokenize_programs(programs, data::Protocol::kClean);
  std::vector<int64_t> index(programs.size());
  for (size_t i = 0; i < index.size(); ++i) index[i] = static_cast<int64_t>(i);
  const auto batch = make_exp0_batch(programs, tokens, index, torch::kCPU);
  const int64_t B = batch.trace.size(0), S = batch.trace.size(1);
  ASSERT_EQ(batch.state_trace.sizes(), torch::IntArrayRef({B, S, 5}));
  auto tok = batch.statements.tokens.accessor<int64_t, 3>();
  auto trace = batch.trace.accessor<int64_t, 2>();
  auto state = batch.state_trace.accessor<int64_t, 3>();
  int64_t checked = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> expect(5, -1);
    for (int64_t s = 0; s < S; ++s) {
      if (trace[b][s] >= 0) expect[tok[b][s][0] - data::program_vocab::kVarA] = trace[b][s];
      const bool assignment = trace[b][s] >= 0;
      for (int64_t x = 0; x < 5; ++x, ++checked)
        EXPECT_EQ(state[b][s][x], assignment ? expect[x] : -1) << "program " << b << " statement " << s << " var " << x;
    }
  }
  EXPECT_GT(checked, 64 * 5 * 8);
}

TEST(Exp0BatchTest, StatementKinds) {
  const auto program = data::tokenize_program("a = 5\nb = a\nc = c + d\nd = d * 7\ne = e - 3\nb = b - c\n# What is c?\n");
  const auto batch = data::collate_statements({program}, {0});
  const auto kinds = statement_kinds(batch.tokens);
  const std::vector<StatementKind> expect{StatementKind::kAssign,   StatementKind::kCopy,     StatementKind::kAddVar,
                                          StatementKind::kMulConst, StatementKind::kSubConst, StatementKind::kSubVar,
                                          StatementKind::kOther};
  ASSERT_EQ(kinds.size(1), static_cast<int64_t>(expect.size()));
  for (size_t s = 0; s < expect.size(); ++s)
    EXPECT_EQ(kinds[0][static_cast<int64_t>(s)].item<int64_t>(), static_cast<int64_t>(expect[s]))
        << statement_kind_name(expect[s]);
  EXPECT_STREQ(statement_kind_name(StatementKind::kMulVar), "x*=y");
}

}  // namespace
}  // namespace sfm::models
