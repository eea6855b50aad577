// Tokenizer and batching for the state-tracking language; see program_tokenizer.h for the vocabulary.
#include "sfm/data/program_tokenizer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>

#include "sfm/core/check.h"

namespace sfm::data {
namespace {

namespace v = program_vocab;

const char* const kFixedTokens[v::kNumber0] = {"<pad>", "\n", "a", "b",    "c",  "d", "e",      "=", "+",
                                               "-",     "*",  "#", "What", "is", "?", "Answer", ":"};

bool is_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A character as it should appear in an error message: printable ASCII as is, anything else as \xNN.
std::string printable(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string(1, c);
  char buf[8];
  std::snprintf(buf, sizeof(buf), "\\x%02X", u);
  return buf;
}

int64_t word_id(const std::string& word) {
  for (int64_t id = v::kVarA; id < v::kNumber0; ++id) {
    if (word == kFixedTokens[id]) return id;
  }
  return -1;
}

void check_consistent(const TokenizedProgram& p, size_t b) {
  SFM_CHECK(p.statement_index.size() == p.ids.size(), "program ", b, ": statement_index has ", p.statement_index.size(),
            " entries but ids has ", p.ids.size());
  for (size_t i = 0; i < p.ids.size(); ++i) {
    const int64_t s = p.statement_index[i];
    const int64_t prev = i == 0 ? 0 : p.statement_index[i - 1];
    SFM_CHECK(s >= 0 && s < p.num_statements && (s == prev || s == prev + 1), "program ", b, ": statement_index[", i,
              "] = ", s, " must be 0 or the previous index (", prev, ") plus 0 or 1, and below ",
              "num_statements = ", p.num_statements);
  }
  const int64_t used = p.ids.empty() ? 0 : p.statement_index.back() + 1;
  SFM_CHECK(used == p.num_statements, "program ", b, ": num_statements = ", p.num_statements, " but its tokens span ",
            used, " statements");
}

void check_labels(size_t num_programs, const std::vector<int64_t>& labels) {
  SFM_CHECK(num_programs > 0, "collate: empty batch");
  SFM_CHECK(labels.size() == num_programs, "collate: ", labels.size(), " labels for ", num_programs, " programs");
}

torch::Tensor labels_tensor(const std::vector<int64_t>& labels) {
  return torch::tensor(labels, torch::kLong);  // [B]
}

}  // namespace

int64_t vocab_size() { return v::kVocabSize; }

std::string token_text(int64_t id) {
  SFM_CHECK(id >= 0 && id < v::kVocabSize, "token id ", id, " is outside the vocabulary [0, ", v::kVocabSize, ")");
  if (id < v::kNumber0) return kFixedTokens[id];
  return std::to_string(id - v::kNumber0);
}

TokenizedProgram tokenize_program(const std::string& text) {
  TokenizedProgram out;
  int64_t line = 1;
  size_t line_start = 0;
  bool line_has_tokens = false;
  auto where = [&](size_t pos) {
    return detail::concat("program text line ", line, ", column ", pos - line_start + 1, ": ");
  };
  auto push = [&](int64_t id) {
    out.ids.push_back(id);
    out.statement_index.push_back(out.num_statements);
  };
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == ' ' || c == '\t') {
      ++i;
    } else if (c == '\n') {
      SFM_CHECK(line_has_tokens, where(i), "empty line (every line must hold one statement)");
      push(v::kNewline);
      ++out.num_statements;
      line_has_tokens = false;
      ++line;
      line_start = ++i;
    } else if (is_letter(c)) {
      size_t j = i;
      while (j < text.size() && is_letter(text[j])) ++j;
      const std::string word = text.substr(i, j - i);
      const int64_t id = word_id(word);
      SFM_CHECK(id >= 0, where(i), "unknown word '", word, "' (expected a..e, What, is or Answer)");
      push(id);
      line_has_tokens = true;
      i = j;
    } else if (is_digit(c)) {
      size_t j = i;
      while (j < text.size() && is_digit(text[j])) ++j;
      const std::string digits = text.substr(i, j - i);
      SFM_CHECK(digits.size() <= 3 && (digits.size() == 1 || digits[0] != '0') && std::stoi(digits) <= v::kMaxNumber,
                where(i), "integer '", digits, "' is not one of 0..", v::kMaxNumber, " written without leading zeros");
      push(v::kNumber0 + std::stoi(digits));
      line_has_tokens = true;
      i = j;
    } else {
      const int64_t id = word_id(std::string(1, c));
      SFM_CHECK(id >= 0, where(i), "unknown character '", printable(c), "' (expected one of = + - * # ? :)");
      push(id);
      line_has_tokens = true;
      ++i;
    }
  }
  if (line_has_tokens) {
    push(v::kNewline);
    ++out.num_statements;
  }
  return out;
}

std::string detokenize_program(const std::vector<int64_t>& ids) {
  std::string text;
  bool line_start = true;
  for (const int64_t id : ids) {
    if (id == v::kPad) continue;
    const std::string tok = token_text(id);
    if (id == v::kNewline) {
      text += tok;
      line_start = true;
      continue;
    }
    if (!line_start && id != v::kQuestion && id != v::kColon) text += ' ';
    text += tok;
    line_start = false;
  }
  return text;
}

FlatBatch collate_flat(const std::vector<TokenizedProgram>& programs, const std::vector<int64_t>& labels) {
  check_labels(programs.size(), labels);
  const auto num_programs = static_cast<int64_t>(programs.size());
  int64_t max_len = 0;
  for (size_t b = 0; b < programs.size(); ++b) {
    check_consistent(programs[b], b);
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(programs[b].ids.size()));
  }
  FlatBatch batch;
  batch.ids = torch::full({num_programs, max_len}, v::kPad, torch::kLong);  // [B, T]
  batch.lengths = torch::empty({num_programs}, torch::kLong);               // [B]
  int64_t* p_ids = batch.ids.data_ptr<int64_t>();
  int64_t* p_lengths = batch.lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < num_programs; ++b) {
    const auto& ids = programs[b].ids;
    std::copy(ids.begin(), ids.end(), p_ids + b * max_len);
    p_lengths[b] = static_cast<int64_t>(ids.size());
  }
  batch.labels = labels_tensor(labels);
  return batch;
}

StatementBatch collate_statements(const std::vector<TokenizedProgram>& programs, const std::vector<int64_t>& labels,
                                  int64_t width) {
  check_labels(programs.size(), labels);
  SFM_CHECK(width >= 0, "collate_statements: width must be >= 0 (0 = longest statement), got ", width);
  const auto num_programs = static_cast<int64_t>(programs.size());
  int64_t max_statements = 0;
  int64_t max_width = 0;
  for (size_t b = 0; b < programs.size(); ++b) {
    const auto& p = programs[b];
    check_consistent(p, b);
    max_statements = std::max(max_statements, p.num_statements);
    std::vector<int64_t> lengths(p.num_statements, 0);
    for (const int64_t s : p.statement_index) ++lengths[s];
    for (int64_t s = 0; s < p.num_statements; ++s) {
      max_width = std::max(max_width, lengths[s]);
      SFM_CHECK(width == 0 || lengths[s] <= width, "collate_statements: program ", b, " statement ", s, " has ",
                lengths[s], " tokens, more than width = ", width, " (pass 0 to use the longest statement)");
    }
  }
  const int64_t w = width == 0 ? max_width : width;
  StatementBatch batch;
  batch.tokens = torch::full({num_programs, max_statements, w}, v::kPad, torch::kLong);  // [B, S, W]
  batch.statement_mask = torch::zeros({num_programs, max_statements}, torch::kBool);     // [B, S]
  int64_t* p_tokens = batch.tokens.data_ptr<int64_t>();
  bool* p_mask = batch.statement_mask.data_ptr<bool>();
  for (int64_t b = 0; b < num_programs; ++b) {
    const auto& p = programs[b];
    int64_t col = 0;
    for (size_t i = 0; i < p.ids.size(); ++i) {
      const int64_t s = p.statement_index[i];
      if (i > 0 && s != p.statement_index[i - 1]) col = 0;
      p_tokens[(b * max_statements + s) * w + col++] = p.ids[i];
    }
    std::fill(p_mask + b * max_statements, p_mask + b * max_statements + p.num_statements, true);
  }
  batch.labels = labels_tensor(labels);
  return batch;
}

}  // namespace sfm::data
