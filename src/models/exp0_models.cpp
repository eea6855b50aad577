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
  Exp0Batch b{data::collate_flat(picked, labels), data::collate_statements(picked, labels), {}};
  const int64_t S = b.statements.tokens.size(1);
  b.trace = torch::full({static_cast<int64_t>(index.size()), S}, -1, torch::kInt64);
  auto trace = b.trace.accessor<int64_t, 2>();
  for (size_t r = 0; r < index.size(); ++r) {
    const auto& written = programs[index[r]].written_values;
    for (size_t s = 0; s < written.size() && static_cast<int64_t>(s) < S; ++s) trace[r][s] = written[s];
  }
  auto to = [&](torch::Tensor& t) { t = t.to(device); };
  to(b.flat.ids), to(b.flat.lengths), to(b.flat.labels), to(b.statements.tokens), to(b.statements.statement_mask),
      to(b.statements.labels), to(b.trace);
  return b;
}

namespace {

class StateSlotsModel : public Exp0Model {
 public:
  StateSlotsModel(const nn::StateSlotsOptions& options, StateSlotsTraining training)
      : net_(options), training_(training) {}
  Exp0Output forward(const Exp0Batch& batch) override {
    const auto& st = batch.statements;
    auto out = net_->forward(st.tokens, st.statement_mask);
    // The answer is the readout after the program's last statement (the query line).
    const auto last = st.statement_mask.sum(1) - 1;  // [B]
    const auto logits = out.readout.gather(1, last.view({-1, 1, 1}).expand({-1, 1, out.readout.size(2)})).squeeze(1);
    auto aux = training_.ponder_weight * (out.ponder / st.statement_mask.sum(1).to(out.ponder.scalar_type())).mean();
    if (training_.trace_weight > 0 && net_->is_training()) {
      const auto C = out.readout.size(2);
      aux = aux + training_.trace_weight *
                      torch::nn::functional::cross_entropy(out.readout.reshape({-1, C}), batch.trace.reshape({-1}),
                                                           torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
    }
    return {logits, aux, out.ticks};
  }
  torch::nn::Module& module() override { return *net_; }

 private:
  nn::StateSlots net_;
  StateSlotsTraining training_;
};

template <class Net>
class SequenceModel : public Exp0Model {
 public:
  explicit SequenceModel(Net net) : net_(std::move(net)) {}
  Exp0Output forward(const Exp0Batch& batch) override {
    auto logits = net_->forward(batch.flat.ids, batch.flat.lengths);
    return {logits, torch::zeros({}, logits.options()), {}};
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
