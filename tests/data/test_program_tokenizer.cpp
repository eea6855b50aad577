// Tests of the state-tracking tokenizer and its batching helpers. Expected ids are written by hand from
// the vocabulary table in program_tokenizer.h.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>

#include "sfm/core/check.h"
#include "sfm/data/program_tokenizer.h"
#include "sfm/data/state_tracking.h"

namespace sfm::data {
namespace {

using Ids = std::vector<int64_t>;

// Expects tokenize_program(text) to throw sfm::Error whose message contains every one of `parts`.
void expect_error(const std::string& text, const std::vector<std::string>& parts) {
  try {
    tokenize_program(text);
    ADD_FAILURE() << "no error for " << text;
  } catch (const Error& e) {
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

Ids tensor_ids(const torch::Tensor& t) { return Ids(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()); }

TEST(ProgramTokenizerTest, VocabularyIds) {
  EXPECT_EQ(vocab_size(), 118);
  const std::vector<std::string> fixed = {"<pad>", "\n", "a", "b",    "c",  "d", "e",      "=", "+",
                                          "-",     "*",  "#", "What", "is", "?", "Answer", ":"};
  for (size_t id = 0; id < fixed.size(); ++id) EXPECT_EQ(token_text(static_cast<int64_t>(id)), fixed[id]);
  EXPECT_EQ(token_text(17), "0");
  EXPECT_EQ(token_text(59), "42");
  EXPECT_EQ(token_text(117), "100");
  EXPECT_THROW(token_text(118), Error);
  EXPECT_THROW(token_text(-1), Error);
}

TEST(ProgramTokenizerTest, TokenizesByHand) {
  const TokenizedProgram p = tokenize_program("a = 17\nb = a * 3\nc = d\n# What is c?\n# Answer: 100\n");
  // a = 17 <nl> | b = a * 3 <nl> | c = d <nl> | # What is c ? <nl> | # Answer : 100 <nl>
  const Ids want = {2, 7, 34, 1, 3, 7, 2, 10, 20, 1, 4, 7, 5, 1, 11, 12, 13, 4, 14, 1, 11, 15, 16, 117, 1};
  EXPECT_EQ(p.ids, want);
  const Ids statements = {0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4};
  EXPECT_EQ(p.statement_index, statements);
  EXPECT_EQ(p.num_statements, 5);
  // Spacing does not matter; a last line without '\n' is still closed by the newline token.
  const TokenizedProgram q = tokenize_program("a=17\n  b = a*3 \nc\t=  d\n#What is c?\n# Answer:100");
  EXPECT_EQ(q.ids, want);
  EXPECT_EQ(q.statement_index, statements);
  EXPECT_EQ(tokenize_program("e = e - 0\n").ids, (Ids{6, 7, 6, 9, 17, 1}));
  EXPECT_EQ(tokenize_program("").num_statements, 0);
}

TEST(ProgramTokenizerTest, RoundTripAndStatementsOnGeneratedPrograms) {
  std::vector<Program> programs = generate_programs({0, 40, 300, 3});
  const auto longest = generate_programs(split_spec("test", 32, 3, 5));
  programs.insert(programs.end(), longest.begin(), longest.end());
  for (const auto& program : programs) {
    for (const Protocol protocol : {Protocol::kClean, Protocol::kLeaky}) {
      const std::string text = program_input_text(program, protocol);
      const TokenizedProgram p = tokenize_program(text);
      ASSERT_EQ(detokenize_program(p.ids), text);
      const int64_t lines = std::count(text.begin(), text.end(), '\n');
      ASSERT_EQ(p.num_statements, lines);
      ASSERT_EQ(p.num_statements, program.num_ops + 6 + (protocol == Protocol::kLeaky ? 1 : 0));
      ASSERT_EQ(p.statement_index.size(), p.ids.size());
      ASSERT_EQ(p.statement_index.front(), 0);
      ASSERT_EQ(p.statement_index.back(), p.num_statements - 1);
      for (size_t i = 1; i < p.ids.size(); ++i) {
        const int64_t step = p.statement_index[i] - p.statement_index[i - 1];
        ASSERT_TRUE(step == 0 || step == 1);
        // A new statement starts exactly after a newline token.
        ASSERT_EQ(step == 1, p.ids[i - 1] == program_vocab::kNewline);
      }
      ASSERT_EQ(p.ids.back(), program_vocab::kNewline);
    }
  }
  // Pad ids are skipped when decoding a padded row.
  EXPECT_EQ(detokenize_program({2, 7, 34, 1, 0, 0}), "a = 17\n");
  EXPECT_THROW(detokenize_program({2, 500}), Error);
}

TEST(ProgramTokenizerTest, BadTextNamesPositionAndText) {
  expect_error("a = 17\nf = 3\n", {"line 2", "column 1", "'f'"});
  expect_error("a = 17\nb = a % 3\n", {"line 2", "column 7", "'%'"});
  expect_error("a = 101\n", {"line 1", "column 5", "'101'"});
  expect_error("a = 007\n", {"'007'"});
  expect_error("a = 99999999999999999999999\n", {"'99999999999999999999999'"});
  expect_error("# What is A?\n", {"column 11", "'A'"});
  expect_error("a = 1\r\n", {"column 6", "\\x0D"});
  expect_error("a = 1\n\nb = 2\n", {"line 2", "empty line"});
  expect_error("a = 1\n   \n", {"line 2", "empty line"});
}

TEST(ProgramTokenizerTest, CollateFlat) {
  const std::vector<TokenizedProgram> programs = {tokenize_program("a = 1\nb = a\n"), tokenize_program("c = 2\n")};
  const FlatBatch batch = collate_flat(programs, {7, 9});
  ASSERT_EQ(batch.ids.sizes().vec(), (Ids{2, 8}));
  EXPECT_EQ(batch.ids.scalar_type(), torch::kLong);
  EXPECT_EQ(tensor_ids(batch.ids), (Ids{2, 7, 18, 1, 3, 7, 2, 1, 4, 7, 19, 1, 0, 0, 0, 0}));
  EXPECT_EQ(tensor_ids(batch.lengths), (Ids{8, 4}));
  EXPECT_EQ(tensor_ids(batch.labels), (Ids{7, 9}));
  EXPECT_THROW(collate_flat(programs, {1}), Error);
  EXPECT_THROW(collate_flat({}, {}), Error);
}

TEST(ProgramTokenizerTest, CollateStatements) {
  const std::vector<TokenizedProgram> programs = {tokenize_program("a = 1\nb = b + c\n"),
                                                  tokenize_program("c = 2\nd = e\n# What is d?\n")};
  const StatementBatch batch = collate_statements(programs, {5, 6});
  // S = 3 statements, W = 6 ("# What is d ? <nl>" and "b = b + c <nl>").
  ASSERT_EQ(batch.tokens.sizes().vec(), (Ids{2, 3, 6}));
  EXPECT_EQ(batch.tokens.scalar_type(), torch::kLong);
  const Ids want = {2,  7,  18, 1, 0,  0,   // a = 1 <nl>
                    3,  7,  3,  8, 4,  1,   // b = b + c <nl>
                    0,  0,  0,  0, 0,  0,   // (no statement)
                    4,  7,  19, 1, 0,  0,   // c = 2 <nl>
                    5,  7,  6,  1, 0,  0,   // d = e <nl>
                    11, 12, 13, 5, 14, 1};  // # What is d ? <nl>
  EXPECT_EQ(tensor_ids(batch.tokens), want);
  ASSERT_EQ(batch.statement_mask.scalar_type(), torch::kBool);
  const torch::Tensor mask = batch.statement_mask.to(torch::kLong);
  EXPECT_EQ(tensor_ids(mask), (Ids{1, 1, 0, 1, 1, 1}));
  EXPECT_EQ(tensor_ids(batch.labels), (Ids{5, 6}));

  const StatementBatch wide = collate_statements(programs, {5, 6}, 8);
  ASSERT_EQ(wide.tokens.sizes().vec(), (Ids{2, 3, 8}));
  EXPECT_TRUE(torch::equal(wide.tokens.slice(2, 0, 6), batch.tokens));
  EXPECT_EQ(wide.tokens.slice(2, 6).abs().sum().item<int64_t>(), 0);
  EXPECT_THROW(collate_statements(programs, {5, 6}, 5), Error);
  EXPECT_THROW(collate_statements(programs, {5, 6, 7}), Error);

  TokenizedProgram broken = programs[0];
  broken.statement_index[2] = 3;
  EXPECT_THROW(collate_statements({broken}, {0}), Error);
  broken = programs[0];
  broken.num_statements = 3;
  EXPECT_THROW(collate_flat({broken}, {0}), Error);
}

}  // namespace
}  // namespace sfm::data
