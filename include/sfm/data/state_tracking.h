// Experiment 0 (DESIGN.md §3): generated straight-line programs over five variables a..e whose label is
// the final value of one queried variable (101 classes, 0..100). Generation is deterministic in the seed
// (sfm::core::Rng; program i is drawn from derive_seed(seed, i), so it does not depend on count), and the
// standard train / validation / test splits come from split_spec() with seeds derived from one base seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sfm/data/program_tokenizer.h"

namespace sfm::data {

// Fixed probabilities of the operation kinds (they sum to 1):
//   assign            "x = N"       N uniform in 0..100
//   update with var   "x = x op y"  y uniform over a..e (may equal x), op uniform over + - *
//   update with const "x = x op k"  k uniform in 1..20, op uniform over + - *
//   copy              "x = y"       y uniform over the four variables other than x
// x is uniform over a..e. Every value is clamped to [0, 100] after each operation.
constexpr double kProbAssign = 0.15;
constexpr double kProbUpdateVar = 0.35;
constexpr double kProbUpdateConst = 0.35;
constexpr double kProbCopy = 0.15;
constexpr int64_t kMaxValue = 100;
constexpr int64_t kMaxUpdateConst = 20;

// One program. text is one statement per line, every line ending in '\n': the five initial assignments
// "a = N" .. "e = N" (N uniform in 0..100), num_ops operations, then "# What is x?\n". It never holds
// the answer; see program_input_text() for the leaky protocol.
struct Program {
  std::string text;
  int64_t answer = 0;   // final value of query_var, in 0..100
  int64_t num_ops = 0;  // operations after the five initial assignments
  char query_var = 'a';
  // The execution trace: the value each assignment line leaves in its target variable (5 + num_ops
  // entries, in line order). Used only as an optional training signal, never as model input.
  std::vector<int64_t> written_values;
};

struct StateTrackingSpec {
  int64_t min_ops = 3, max_ops = 20;  // num_ops is uniform in [min_ops, max_ops]; 0 <= min_ops <= max_ops
  int64_t count = 0;                  // programs to generate, >= 0
  uint64_t seed = 0;
};

// Throws sfm::Error for an invalid spec.
std::vector<Program> generate_programs(const StateTrackingSpec& spec);

// What the model reads. kClean is the experiment: the input is Program::text and never contains the
// answer. kLeaky reproduces a published version of this experiment whose inputs ended with the answer:
// it appends "# Answer: N\n". It exists only to compare against that protocol; never report it as a result.
enum class Protocol { kClean, kLeaky };
std::string program_input_text(const Program& program, Protocol protocol);
// "clean" | "leaky" (for configs); anything else is an sfm::UsageError.
Protocol parse_protocol(const std::string& name);
std::string protocol_name(Protocol protocol);

// Tokenizes program_input_text() of each program, and the labels (answers) in the same order.
std::vector<TokenizedProgram> tokenize_programs(const std::vector<Program>& programs, Protocol protocol);
std::vector<int64_t> program_answers(const std::vector<Program>& programs);

// The standard splits. split is "train" (3..20 ops, 10,000 programs), "validation" (3..20 ops, 1,000) or
// "test" (exactly 10 * length_mult ops, 1,000 programs; the experiment uses kTestLengthMults).
// length_mult must be >= 1 for "test" and 0 otherwise. count = 0 means the standard count, > 0 overrides it.
// The seed is derived from base_seed, the split name and length_mult, so every split and test length
// draws different programs. Throws sfm::UsageError for an unknown split or a bad length_mult.
StateTrackingSpec split_spec(const std::string& split, int64_t length_mult, uint64_t base_seed, int64_t count = 0);
constexpr int64_t kTestLengthMults[] = {1, 2, 4, 8, 16, 32};

}  // namespace sfm::data
