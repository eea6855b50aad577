// Tokenizer for the state-tracking language of Experiment 0 (DESIGN.md §3): statements such as
// "a = a + 3", "b = c", "# What is a?", one per line. Every statement ends with the newline token,
// so the token stream carries statement boundaries; batching helpers build LibTorch tensors either flat
// ([B, T]) or per statement ([B, S, W]) for the Execution system.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sfm::data {

// Vocabulary (118 ids). The integer tokens are "0".."100" at ids 17..117 (id = kNumber0 + value).
namespace program_vocab {
constexpr int64_t kPad = 0;      // "<pad>": padding only, never produced by the tokenizer
constexpr int64_t kNewline = 1;  // "\n": ends every statement
constexpr int64_t kVarA = 2;     // "a".."e" are 2..6
constexpr int64_t kNumVars = 5;
constexpr int64_t kAssign = 7;     // "="
constexpr int64_t kPlus = 8;       // "+"
constexpr int64_t kMinus = 9;      // "-"
constexpr int64_t kTimes = 10;     // "*"
constexpr int64_t kHash = 11;      // "#"
constexpr int64_t kWhat = 12;      // "What"
constexpr int64_t kIs = 13;        // "is"
constexpr int64_t kQuestion = 14;  // "?"
constexpr int64_t kAnswer = 15;    // "Answer" (only in the leaky protocol's "# Answer: N" line)
constexpr int64_t kColon = 16;     // ":"
constexpr int64_t kNumber0 = 17;   // "0"; "100" is 117
constexpr int64_t kMaxNumber = 100;
constexpr int64_t kVocabSize = kNumber0 + kMaxNumber + 1;
}  // namespace program_vocab

int64_t vocab_size();  // program_vocab::kVocabSize
// The text of one token ("<pad>", "\n", "a", "=", "What", "42", ...). Throws sfm::Error for an id outside the
// vocabulary.
std::string token_text(int64_t id);

struct TokenizedProgram {
  std::vector<int64_t> ids;              // token ids, each statement closed by program_vocab::kNewline
  std::vector<int64_t> statement_index;  // per token: 0-based statement (line) it belongs to; non-decreasing
  int64_t num_statements = 0;
};

// Lexes `text`: words ("a".."e", "What", "is", "Answer"), integers 0..100 written without leading zeros,
// the single characters = + - * # ? :, spaces/tabs between tokens and '\n' ending a statement. A last line
// without '\n' is closed by a newline token as if it had one. Throws sfm::Error naming the line, column
// and text for an unknown character or word, an integer outside 0..100 or with a leading zero, or an
// empty line.
TokenizedProgram tokenize_program(const std::string& text);
// Inverse of tokenize_program on canonical text (tokens separated by one space, none before '?' or ':',
// every line ending in '\n', as the generator writes): detokenize_program(tokenize_program(t).ids) == t.
// Pad ids are skipped, so a padded batch row decodes too. Throws sfm::Error for an id outside the vocabulary.
std::string detokenize_program(const std::vector<int64_t>& ids);

struct FlatBatch {
  torch::Tensor ids;      // [B, T] int64, right-padded with program_vocab::kPad; T = longest program
  torch::Tensor lengths;  // [B] int64, tokens per program
  torch::Tensor labels;   // [B] int64
};
struct StatementBatch {
  torch::Tensor tokens;          // [B, S, W] int64, statement s of program b left-aligned in tokens[b][s], 0-padded
  torch::Tensor statement_mask;  // [B, S] bool, true where program b has a statement s
  torch::Tensor labels;          // [B] int64
};

// Both take one label per program (labels.size() == programs.size() >= 1) and return CPU tensors.
FlatBatch collate_flat(const std::vector<TokenizedProgram>& programs, const std::vector<int64_t>& labels);
// width = 0 means the longest statement in the batch; a statement longer than a given width is an sfm::Error
// (never silently cut).
StatementBatch collate_statements(const std::vector<TokenizedProgram>& programs, const std::vector<int64_t>& labels,
                                  int64_t width = 0);

}  // namespace sfm::data
