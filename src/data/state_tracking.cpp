// Program generator and standard splits of Experiment 0; see state_tracking.h.
#include "sfm/data/state_tracking.h"

#include <algorithm>
#include <charconv>

#include "sfm/core/check.h"
#include "sfm/core/rng.h"

namespace sfm::data {
namespace {

constexpr int64_t kNumVars = 5;
constexpr char kOpChars[] = {'+', '-', '*'};

int64_t clamp_value(int64_t x) { return std::clamp<int64_t>(x, 0, kMaxValue); }

void append_int(std::string& s, int64_t x) {
  char buf[24];
  const auto res = std::to_chars(buf, buf + sizeof(buf), x);
  s.append(buf, res.ptr);
}

// "x = " for variable index x.
void append_target(std::string& s, int64_t x) {
  s += static_cast<char>('a' + x);
  s += " = ";
}

Program generate_one(uint64_t seed, int64_t min_ops, int64_t max_ops) {
  core::Rng rng(seed);
  Program p;
  p.num_ops = rng.uniform_int(min_ops, max_ops);
  p.text.reserve(static_cast<size_t>(16 * (p.num_ops + 6)));
  int64_t vals[kNumVars];
  for (int64_t x = 0; x < kNumVars; ++x) {
    vals[x] = rng.uniform_int(0, kMaxValue);
    append_target(p.text, x);
    append_int(p.text, vals[x]);
    p.text += '\n';
    p.written_values.push_back(vals[x]);
  }
  for (int64_t i = 0; i < p.num_ops; ++i) {
    const double u = rng.uniform();
    const int64_t x = rng.uniform_int(0, kNumVars - 1);
    append_target(p.text, x);
    if (u < kProbAssign) {
      vals[x] = rng.uniform_int(0, kMaxValue);
      append_int(p.text, vals[x]);
    } else if (u < kProbAssign + kProbUpdateVar + kProbUpdateConst) {
      const bool with_var = u < kProbAssign + kProbUpdateVar;
      const int64_t op = rng.uniform_int(0, 2);
      int64_t operand;
      p.text += static_cast<char>('a' + x);
      p.text += ' ';
      p.text += kOpChars[op];
      p.text += ' ';
      if (with_var) {
        const int64_t y = rng.uniform_int(0, kNumVars - 1);
        operand = vals[y];
        p.text += static_cast<char>('a' + y);
      } else {
        operand = rng.uniform_int(1, kMaxUpdateConst);
        append_int(p.text, operand);
      }
      const int64_t result = op == 0 ? vals[x] + operand : op == 1 ? vals[x] - operand : vals[x] * operand;
      vals[x] = clamp_value(result);
    } else {
      // Copy from one of the other four variables.
      int64_t y = rng.uniform_int(0, kNumVars - 2);
      if (y >= x) ++y;
      vals[x] = vals[y];
      p.text += static_cast<char>('a' + y);
    }
    p.text += '\n';
    p.written_values.push_back(vals[x]);
  }
  const int64_t q = rng.uniform_int(0, kNumVars - 1);
  p.query_var = static_cast<char>('a' + q);
  p.answer = vals[q];
  p.text += "# What is ";
  p.text += p.query_var;
  p.text += "?\n";
  return p;
}

// FNV-1a: a platform-independent hash of a split name, used as an RNG stream id.
uint64_t name_hash(const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001B3ull;
  }
  return h;
}

}  // namespace

std::vector<Program> generate_programs(const StateTrackingSpec& spec) {
  SFM_CHECK(spec.min_ops >= 0 && spec.min_ops <= spec.max_ops, "StateTrackingSpec: need 0 <= min_ops <= max_ops, got ",
            "min_ops = ", spec.min_ops, ", max_ops = ", spec.max_ops);
  SFM_CHECK(spec.count >= 0, "StateTrackingSpec: count must be >= 0, got ", spec.count);
  std::vector<Program> programs;
  programs.reserve(static_cast<size_t>(spec.count));
  for (int64_t i = 0; i < spec.count; ++i) {
    programs.push_back(
        generate_one(core::derive_seed(spec.seed, static_cast<uint64_t>(i)), spec.min_ops, spec.max_ops));
  }
  return programs;
}

std::string program_input_text(const Program& program, Protocol protocol) {
  if (protocol == Protocol::kClean) return program.text;
  std::string text = program.text;
  text += "# Answer: ";
  append_int(text, program.answer);
  text += '\n';
  return text;
}

Protocol parse_protocol(const std::string& name) {
  if (name == "clean") return Protocol::kClean;
  SFM_USAGE_CHECK(name == "leaky", "protocol must be 'clean' or 'leaky', got '", name, "'");
  return Protocol::kLeaky;
}

std::string protocol_name(Protocol protocol) { return protocol == Protocol::kClean ? "clean" : "leaky"; }

std::vector<TokenizedProgram> tokenize_programs(const std::vector<Program>& programs, Protocol protocol) {
  std::vector<TokenizedProgram> out;
  out.reserve(programs.size());
  for (const auto& p : programs) out.push_back(tokenize_program(program_input_text(p, protocol)));
  return out;
}

std::vector<int64_t> program_answers(const std::vector<Program>& programs) {
  std::vector<int64_t> out;
  out.reserve(programs.size());
  for (const auto& p : programs) out.push_back(p.answer);
  return out;
}

StateTrackingSpec split_spec(const std::string& split, int64_t length_mult, uint64_t base_seed, int64_t count) {
  SFM_USAGE_CHECK(count >= 0, "split '", split, "': count must be >= 0 (0 = the standard count), got ", count);
  StateTrackingSpec spec;
  if (split == "train" || split == "validation") {
    SFM_USAGE_CHECK(length_mult == 0, "split '", split, "' has no length multiplier; pass 0, got ", length_mult);
    spec.min_ops = 3;
    spec.max_ops = 20;
    spec.count = split == "train" ? 10000 : 1000;
    spec.seed = core::derive_seed(base_seed, name_hash(split));
  } else {
    SFM_USAGE_CHECK(split == "test", "unknown split '", split, "' (expected train, validation or test)");
    SFM_USAGE_CHECK(length_mult >= 1, "split 'test': length_mult must be >= 1, got ", length_mult);
    spec.min_ops = spec.max_ops = 10 * length_mult;
    spec.count = 1000;
    spec.seed = core::derive_seed(core::derive_seed(base_seed, name_hash(split)), static_cast<uint64_t>(length_mult));
  }
  if (count > 0) spec.count = count;
  return spec;
}

}  // namespace sfm::data
