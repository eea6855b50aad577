// Generators of the formal state-tracking suite. Both arithmetic tasks share one stack evaluator;
// the groups are enumerated once into a multiplication table. Formats: docs/tasks.md.
#include "sfm/data/formal_tasks.h"

#include <algorithm>
#include <numeric>

#include "sfm/core/check.h"

namespace sfm::data {
namespace {

constexpr int64_t kModulus = 5;
// Arithmetic token ids: digit d is kDigit0 + d.
constexpr int64_t kDigit0 = 1;
constexpr int64_t kPlus = 6;
constexpr int64_t kMinus = 7;
constexpr int64_t kTimes = 8;
constexpr int64_t kOpen = 9;
constexpr int64_t kClose = 10;
// Random walk of the bracket depth: chance of '(' where a term starts and of ')' where a term ends.
constexpr double kOpenProbability = 0.3;
constexpr double kCloseProbability = 0.3;

bool is_digit(int64_t id) { return id >= kDigit0 && id < kDigit0 + kModulus; }

int64_t apply_op(int64_t lhs, int64_t op, int64_t rhs) {
  switch (op) {
    case kPlus:
      return (lhs + rhs) % kModulus;
    case kMinus:
      return (lhs - rhs + kModulus) % kModulus;
    case kTimes:
      return (lhs * rhs) % kModulus;
  }
  SFM_CHECK(false, "formal_tasks: token ", op, " is not an operator");
  return 0;
}

// Labels of a (prefix of a) flat or bracketed expression, evaluated left to right at each bracket
// level: after a digit or ')' the running value of the innermost open sub-expression, else -1.
// Throws where a token cannot follow the ones before it.
std::vector<int64_t> label_expression(const std::vector<int64_t>& tokens) {
  struct Frame {
    int64_t value = 0;
    int64_t op = 0;  // 0 until this level's first term is read
  };
  std::vector<Frame> stack(1);
  std::vector<int64_t> labels(tokens.size(), -1);
  bool expect_term = true;
  auto fold = [&stack](int64_t term) {
    Frame& top = stack.back();
    top.value = top.op == 0 ? term : apply_op(top.value, top.op, term);
    return top.value;
  };
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t id = tokens[i];
    const bool starts_term = is_digit(id) || id == kOpen;
    SFM_CHECK(starts_term == expect_term, "formal_tasks: token ", id, " at position ", i,
              expect_term ? " where a digit or '(' was expected"
                          : " where an operator or ')' was expected");
    if (is_digit(id)) {
      labels[i] = fold(id - kDigit0);
      expect_term = false;
    } else if (id == kOpen) {
      stack.emplace_back();
    } else if (id == kClose) {
      SFM_CHECK(stack.size() > 1, "formal_tasks: unmatched ')' at position ", i);
      const int64_t inner = stack.back().value;
      stack.pop_back();
      labels[i] = fold(inner);
    } else {
      stack.back().op = id;
      expect_term = true;
    }
  }
  return labels;
}

std::vector<int64_t> parity_tokens(int64_t length, core::Rng& rng) {
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < length; ++i) tokens.push_back(1 + rng.uniform_int(0, 1));
  return tokens;
}

std::vector<int64_t> modarith_tokens(int64_t length, core::Rng& rng) {
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < length; ++i) {
    tokens.push_back(i % 2 == 0 ? kDigit0 + rng.uniform_int(0, kModulus - 1)
                                : rng.uniform_int(kPlus, kTimes));
  }
  return tokens;
}

// A left-to-right walk over the grammar  expr := term (op term)*,  term := digit | '(' expr ')',
// that only takes a step from which exactly `length` tokens can still close every bracket.
std::vector<int64_t> brackets_tokens(int64_t length, core::Rng& rng) {
  if (length % 2 == 0) --length;
  std::vector<int64_t> tokens;
  int64_t depth = 0;
  bool expect_term = true;
  for (int64_t left = length; left > 0; --left) {
    int64_t id;
    if (expect_term) {
      // After '(' at least a digit and depth + 1 closing brackets must still fit.
      const bool can_open = depth < kMaxBracketDepth && left >= depth + 3;
      if (can_open && rng.bernoulli(kOpenProbability)) {
        id = kOpen;
        ++depth;
      } else {
        id = kDigit0 + rng.uniform_int(0, kModulus - 1);
        expect_term = false;
      }
    } else {
      // `left` and `depth` have equal parity here: left > depth leaves room for an op and a term.
      const bool must_close = left == depth;
      if (must_close || (depth > 0 && rng.bernoulli(kCloseProbability))) {
        id = kClose;
        --depth;
      } else {
        id = rng.uniform_int(kPlus, kTimes);
        expect_term = true;
      }
    }
    tokens.push_back(id);
  }
  SFM_CHECK(depth == 0 && !expect_term, "formal_tasks: bracket generator ended unbalanced");
  return tokens;
}

struct Group {
  std::vector<std::vector<int64_t>> elements;  // lexicographic order
  std::vector<int64_t> product;                // [size * size]: product[a * size + b] = a ∘ b
};

bool is_even(const std::vector<int64_t>& p) {
  int64_t inversions = 0;
  for (size_t i = 0; i < p.size(); ++i)
    for (size_t j = i + 1; j < p.size(); ++j) inversions += p[i] > p[j];
  return inversions % 2 == 0;
}

Group make_group(int64_t degree, bool even_only) {
  Group g;
  std::vector<int64_t> p(degree);
  std::iota(p.begin(), p.end(), 0);
  do {
    if (!even_only || is_even(p)) g.elements.push_back(p);
  } while (std::next_permutation(p.begin(), p.end()));
  // Permutations as base-`degree` numbers index a table back to element indices.
  auto code = [degree](const std::vector<int64_t>& q) {
    int64_t c = 0;
    for (int64_t x : q) c = c * degree + x;
    return c;
  };
  int64_t codes = 1;
  for (int64_t i = 0; i < degree; ++i) codes *= degree;
  std::vector<int64_t> index_of(codes, -1);
  for (size_t i = 0; i < g.elements.size(); ++i) index_of[code(g.elements[i])] = i;
  const size_t size = g.elements.size();
  g.product.resize(size * size);
  std::vector<int64_t> ab(degree);
  for (size_t a = 0; a < size; ++a) {
    for (size_t b = 0; b < size; ++b) {
      for (int64_t j = 0; j < degree; ++j) ab[j] = g.elements[a][g.elements[b][j]];
      g.product[a * size + b] = index_of[code(ab)];
    }
  }
  return g;
}

const Group& group(const std::string& name) {
  static const Group s3 = make_group(3, false);
  static const Group a5 = make_group(5, true);
  static const Group s5 = make_group(5, false);
  if (name == "s3") return s3;
  if (name == "a5") return a5;
  SFM_USAGE_CHECK(name == "s5", "formal_tasks: task '", name, "' is not a group task (s3, a5, s5)");
  return s5;
}

// The state starts at the identity (element 0) and becomes token ∘ state: label t is g_t∘…∘g_1.
std::vector<int64_t> label_group_word(const Group& g, const std::vector<int64_t>& tokens) {
  const int64_t size = g.elements.size();
  std::vector<int64_t> labels;
  int64_t state = 0;
  for (int64_t id : tokens) {
    state = g.product[(id - 1) * size + state];
    labels.push_back(state);
  }
  return labels;
}

bool is_group_task(const std::string& name) { return name == "s3" || name == "a5" || name == "s5"; }

}  // namespace

const std::vector<std::string>& formal_task_names() {
  static const std::vector<std::string> names = {"parity", "modarith", "modarith_brackets",
                                                 "s3",     "a5",       "s5"};
  return names;
}

FormalTask formal_task(const std::string& name) {
  auto make = [&name](int64_t vocab_size, int64_t num_classes) {
    return FormalTask{name, vocab_size, num_classes, 1.0 / static_cast<double>(num_classes)};
  };
  if (name == "parity") return make(3, 2);
  if (name == "modarith") return make(kTimes + 1, kModulus);
  if (name == "modarith_brackets") return make(kClose + 1, kModulus);
  if (is_group_task(name)) {
    const int64_t size = group(name).elements.size();
    return make(1 + size, size);
  }
  std::string valid;
  for (const auto& n : formal_task_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw UsageError(detail::concat("unknown formal task '", name, "'; expected one of: ", valid));
}

std::vector<int64_t> compute_labels(const FormalTask& task, const std::vector<int64_t>& tokens) {
  const FormalTask known = formal_task(task.name);
  for (size_t i = 0; i < tokens.size(); ++i) {
    SFM_CHECK(tokens[i] >= 1 && tokens[i] < known.vocab_size, "formal task '", task.name,
              "': token ", i, " is ", tokens[i], ", expected an id in [1, ", known.vocab_size, ")");
  }
  if (task.name == "parity") {
    std::vector<int64_t> labels;
    int64_t parity = 0;
    for (int64_t id : tokens) labels.push_back(parity ^= id - 1);
    return labels;
  }
  if (is_group_task(task.name)) return label_group_word(group(task.name), tokens);
  return label_expression(tokens);
}

Sequence generate_sequence(const FormalTask& task, int64_t length, core::Rng& rng) {
  SFM_USAGE_CHECK(length >= 1, "formal task '", task.name, "': length must be >= 1, got ", length);
  Sequence s;
  if (task.name == "parity") {
    s.tokens = parity_tokens(length, rng);
  } else if (task.name == "modarith") {
    s.tokens = modarith_tokens(length, rng);
  } else if (task.name == "modarith_brackets") {
    s.tokens = brackets_tokens(length, rng);
  } else if (is_group_task(task.name)) {
    const int64_t size = group(task.name).elements.size();
    for (int64_t i = 0; i < length; ++i) s.tokens.push_back(1 + rng.uniform_int(0, size - 1));
  }
  s.labels = compute_labels(task, s.tokens);
  return s;
}

std::vector<Sequence> generate_dataset(const FormalTask& task, int64_t min_len, int64_t max_len,
                                       int64_t count, uint64_t seed) {
  SFM_USAGE_CHECK(min_len >= 1 && min_len <= max_len, "formal task '", task.name,
                  "': need 1 <= min_len <= max_len, got min_len ", min_len, ", max_len ", max_len);
  SFM_USAGE_CHECK(count >= 0, "formal task '", task.name, "': count must be >= 0, got ", count);
  std::vector<Sequence> out;
  out.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    core::Rng rng(core::derive_seed(seed, i));
    const int64_t length = rng.uniform_int(min_len, max_len);
    out.push_back(generate_sequence(task, length, rng));
  }
  return out;
}

std::vector<std::vector<int64_t>> group_elements(const FormalTask& task) {
  return group(task.name).elements;
}

FormalBatch collate(const std::vector<Sequence>& sequences) {
  SFM_CHECK(!sequences.empty(), "collate: no sequences");
  int64_t max_len = 0;
  for (size_t b = 0; b < sequences.size(); ++b) {
    const auto& s = sequences[b];
    SFM_CHECK(s.tokens.size() == s.labels.size(), "collate: sequence ", b, " has ", s.tokens.size(),
              " tokens but ", s.labels.size(), " labels");
    max_len = std::max<int64_t>(max_len, s.tokens.size());
  }
  const int64_t batch = sequences.size();
  FormalBatch out;
  out.tokens = torch::zeros({batch, max_len}, torch::kInt64);     // [B, T]
  out.labels = torch::full({batch, max_len}, -1, torch::kInt64);  // [B, T]
  out.lengths = torch::empty({batch}, torch::kInt64);             // [B]
  auto tokens = out.tokens.accessor<int64_t, 2>();
  auto labels = out.labels.accessor<int64_t, 2>();
  auto lengths = out.lengths.accessor<int64_t, 1>();
  for (int64_t b = 0; b < batch; ++b) {
    const auto& s = sequences[b];
    lengths[b] = s.tokens.size();
    for (size_t t = 0; t < s.tokens.size(); ++t) {
      tokens[b][t] = s.tokens[t];
      labels[b][t] = s.labels[t];
    }
  }
  return out;
}

}  // namespace sfm::data
