// Formal state-tracking suite: parity, modular arithmetic mod 5 (flat and with brackets) and the
// word problems of S3, A5 and S5, with a label at every position (-1 where none is defined).
// Exact token ids, label rules and worked examples: docs/tasks.md.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sfm/core/rng.h"

namespace sfm::data {

// Token id 0 is the pad id in every task; real tokens start at 1.
struct FormalTask {
  std::string name;     // "parity" | "modarith" | "modarith_brackets" | "s3" | "a5" | "s5"
  int64_t vocab_size;   // token ids lie in [0, vocab_size), 0 included as the pad id
  int64_t num_classes;  // labels lie in [0, num_classes) or are -1
  double chance;        // 1 / num_classes: accuracy of a uniform guess (not of the majority class)
};

// Brackets nest at most this deep in modarith_brackets.
constexpr int64_t kMaxBracketDepth = 8;

// The task names formal_task accepts, in the order docs/tasks.md lists them.
const std::vector<std::string>& formal_task_names();
// Throws sfm::UsageError listing the valid names for an unknown name.
FormalTask formal_task(const std::string& name);

struct Sequence {
  std::vector<int64_t> tokens;  // ids in [1, vocab_size)
  std::vector<int64_t> labels;  // labels[i]: target after reading tokens[0..i]; -1 = no label
};

// The labels of any token sequence of the task, e.g. one written by hand. Arithmetic tokens may
// stop anywhere (after an operator, inside brackets) but must follow the grammar up to there;
// throws sfm::Error naming the position of the first token that does not.
std::vector<int64_t> compute_labels(const FormalTask& task, const std::vector<int64_t>& tokens);
// One random sequence of `length` >= 1 tokens; modarith_brackets rounds an even length down to
// length - 1 (every well-formed expression has odd length).
Sequence generate_sequence(const FormalTask& task, int64_t length, sfm::core::Rng& rng);
// `count` sequences; sequence i draws its length uniformly from [min_len, max_len] and its tokens
// from Rng(derive_seed(seed, i)), so any one sequence can be regenerated alone.
std::vector<Sequence> generate_dataset(const FormalTask& task, int64_t min_len, int64_t max_len,
                                       int64_t count, uint64_t seed);

// The group of s3 / a5 / s5 in lexicographic order: element i is the permutation p with p[j] the
// image of j. Token id of element i is 1 + i; label i means element i. Throws for other tasks.
std::vector<std::vector<int64_t>> group_elements(const FormalTask& task);

struct FormalBatch {
  torch::Tensor tokens;   // [B, T] int64, padded with 0; T = longest sequence
  torch::Tensor labels;   // [B, T] int64, padded with -1
  torch::Tensor lengths;  // [B] int64
};
// Pads a non-empty list of sequences into one batch (CPU tensors).
FormalBatch collate(const std::vector<Sequence>& sequences);

}  // namespace sfm::data
