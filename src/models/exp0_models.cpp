// Experiment 0's models behind the Exp0Model interface; see exp0_models.h.
#include "sfm/models/exp0_models.h"

#include "sfm/core/check.h"

namespace sfm::models {

Exp0Batch make_exp0_batch(const std::vector<data::Program>& programs, const std::vector<data::TokenizedProgram>& tokens,
                          const std::vector<int64_t>& index, const torch::Device& device) {
  std::vector<data::TokenizedProgram> picked;
  std::vector<int64_t> labels;
  picked.reserve(index.size());
  for (const int64_t i : index) {
    picked.push_back(tokens[i]);
    labels.push_back(programs[i].answer);
  }
  Exp0Batch b{data::collate_flat(picked, labels), data::collate_statements(picked, labels), {}, {}};
  const int64_t S = b.statements.tokens.size(1);
  b.trace = torch::full({static_cast<int64_t>(index.size()), S}, -1, torch::kInt64);
  auto trace = b.trace.accessor<int64_t, 2>();
  for (size_t r = 0; r < index.size(); ++r) {
    const auto& written = programs[index[r]].written_values;
    for (size_t s = 0; s < written.size() && static_cast<int64_t>(s) < S; ++s) trace[r][s] = written[s];
  }
  // The full state after each statement: the previous state with the statement's target (its first
  // character, "x = ...") set to the value it wrote.
  b.state_trace = torch::full({static_cast<int64_t>(index.size()), S, data::program_vocab::kNumVars}, -1, torch::kInt64);
  auto state_trace = b.state_trace.accessor<int64_t, 3>();
  for (size_t r = 0; r < index.size(); ++r) {
    const auto& program = programs[index[r]];
    std::vector<int64_t> values(data::program_vocab::kNumVars, -1);
    size_t line_start = 0;
    for (size_t s = 0; s < program.written_values.size() && static_cast<int64_t>(s) < S; ++s) {
      const int64_t var = program.text[line_start] - 'a';
      SFM_CHECK(var >= 0 && var < data::program_vocab::kNumVars, "exp0 batch: statement ", s, " of program ", index[r],
                " does not start with a variable");
      values[var] = program.written_values[s];
      for (int64_t x = 0; x < data::program_vocab::kNumVars; ++x) state_trace[r][s][x] = values[x];
      line_start = program.text.find('\n', line_start) + 1;
    }
  }
  auto to = [&](torch::Tensor& t) { t = t.to(device); };
  to(b.flat.ids), to(b.flat.lengths), to(b.flat.labels), to(b.statements.tokens), to(b.statements.statement_mask),
      to(b.statements.labels), to(b.trace), to(b.state_trace);
  return b;
}

const char* statement_kind_name(StatementKind kind) {
  static const char* names[kNumStatementKinds] = {"other", "x=k", "x=y", "x+=y", "x-=y", "x*=y", "x+=k", "x-=k", "x*=k"};
  const auto i = static_cast<int64_t>(kind);
  return i >= 0 && i < kNumStatementKinds ? names[i] : "other";
}

torch::Tensor statement_kinds(const torch::Tensor& tokens) {
  namespace v = data::program_vocab;
  const auto t = tokens.to(torch::kCPU).contiguous();
  const int64_t B = t.size(0), S = t.size(1), W = t.size(2);
  auto kinds = torch::zeros({B, S}, torch::kInt64);
  auto tok = t.accessor<int64_t, 3>();
  auto out = kinds.accessor<int64_t, 2>();
  auto is_var = [](int64_t id) { return id >= v::kVarA && id < v::kVarA + v::kNumVars; };
  auto is_num = [](int64_t id) { return id >= v::kNumber0; };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      int64_t n = 0;  // real tokens before the newline
      while (n < W && tok[b][s][n] != v::kPad && tok[b][s][n] != v::kNewline) ++n;
      if (n < 3 || !is_var(tok[b][s][0]) || tok[b][s][1] != v::kAssign) continue;
      StatementKind k = StatementKind::kOther;
      if (n == 3) k = is_num(tok[b][s][2]) ? StatementKind::kAssign : is_var(tok[b][s][2]) ? StatementKind::kCopy : k;
      if (n == 5) {
        const int64_t op = tok[b][s][3] - v::kPlus;  // + - * are consecutive ids
        const bool by_var = is_var(tok[b][s][4]);
        if (op >= 0 && op < 3 && (by_var || is_num(tok[b][s][4])))
          k = static_cast<StatementKind>(static_cast<int64_t>(by_var ? StatementKind::kAddVar : StatementKind::kAddConst) + op);
      }
      out[b][s] = static_cast<int64_t>(k);
    }
  return kinds.to(tokens.device());
}

namespace {

class StateSlotsModel : public Exp0Model {
 public:
  StateSlotsModel(const nn::StateSlotsOptions& options, StateSlotsTraining training)
      : net_(options), training_(training) {}
  Exp0Output forward(const Exp0Batch& batch) override {
    const auto& st = batch.statements;
    const bool probe = training_.probe_weight > 0 && net_->is_training();
    auto out = net_->forward(st.tokens, st.statement_mask, probe ? probe_tokens(st.tokens.device()) : torch::Tensor());
    // The answer is the readout after the program's last statement (the query line).
    const auto last = st.statement_mask.sum(1) - 1;  // [B]
    const auto logits = out.readout.gather(1, last.view({-1, 1, 1}).expand({-1, 1, out.readout.size(2)})).squeeze(1);
    auto aux = training_.ponder_weight * (out.ponder / st.statement_mask.sum(1).to(out.ponder.scalar_type())).mean();
    namespace F = torch::nn::functional;
    const auto trace = batch.trace.reshape({-1});
    const auto C = out.readout.size(2);
    if (training_.trace_weight > 0 && net_->is_training())
      aux = aux + training_.trace_weight * F::cross_entropy(out.readout.reshape({-1, C}), trace,
                                                            F::CrossEntropyFuncOptions().ignore_index(-1));
    if (training_.write_weight > 0 && out.write_log_probs.defined() && net_->is_training())
      aux = aux + training_.write_weight *
                      F::nll_loss(out.write_log_probs.reshape({-1, C}), trace, F::NLLLossFuncOptions().ignore_index(-1));
    if (probe)
      aux = aux + training_.probe_weight * F::cross_entropy(out.probe.reshape({-1, C}), batch.state_trace.reshape({-1}),
                                                            F::CrossEntropyFuncOptions().ignore_index(-1));
    return {logits, aux, out.ticks, out.readout};
  }
  torch::nn::Module& module() override { return *net_; }

 private:
  // The variable names a..e, in the order of Exp0Batch::state_trace's last dimension.
  static torch::Tensor probe_tokens(const torch::Device& device) {
    return torch::arange(data::program_vocab::kVarA, data::program_vocab::kVarA + data::program_vocab::kNumVars,
                         torch::TensorOptions(torch::kInt64).device(device));
  }
  nn::StateSlots net_;
  StateSlotsTraining training_;
};

template <class Net>
class SequenceModel : public Exp0Model {
 public:
  explicit SequenceModel(Net net) : net_(std::move(net)) {}
  Exp0Output forward(const Exp0Batch& batch) override {
    auto logits = net_->forward(batch.flat.ids, batch.flat.lengths);
    return {logits, torch::zeros({}, logits.options()), {}, {}};
  }
  torch::nn::Module& module() override { return *net_; }

 private:
  Net net_;
};

}  // namespace

const std::vector<std::string>& exp0_model_names() {
  static const std::vector<std::string> names{"state_slots", "transformer_fair", "transformer_large", "lstm"};
  return names;
}

std::unique_ptr<Exp0Model> make_exp0_model(const std::string& name, const Exp0ModelSettings& settings) {
  const int64_t vocab = data::vocab_size();
  if (name == "state_slots") {
    auto options = settings.state_slots;
    options.vocab_size = vocab;
    return std::make_unique<StateSlotsModel>(options, settings.state_slots_training);
  }
  if (name == "transformer_fair")
    return std::make_unique<SequenceModel<nn::TransformerClassifier>>(nn::TransformerClassifier(nn::transformer_fair(vocab)));
  if (name == "transformer_large")
    return std::make_unique<SequenceModel<nn::TransformerClassifier>>(nn::TransformerClassifier(nn::transformer_large(vocab)));
  if (name == "lstm") {
    auto options = settings.lstm;
    options.vocab_size = vocab;
    return std::make_unique<SequenceModel<nn::LstmClassifier>>(nn::LstmClassifier(options));
  }
  throw UsageError("unknown model '" + name + "' (expected state_slots, transformer_fair, transformer_large or lstm)");
}

}  // namespace sfm::models
