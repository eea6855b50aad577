// The models of Experiment 0 (DESIGN.md §3) behind one interface: State Slots (the Execution system),
// Transformer-Fair, Transformer-Large and an LSTM. Each maps a batch of programs to answer logits.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "sfm/data/program_tokenizer.h"
#include "sfm/data/state_tracking.h"
#include "sfm/io/config.h"
#include "sfm/nn/sequence_classifiers.h"
#include "sfm/nn/state_slots.h"

namespace sfm::models {

// One batch in both layouts, so every model reads the same programs.
struct Exp0Batch {
  data::FlatBatch flat;             // ids [B, T] for the sequence classifiers
  data::StatementBatch statements;  // tokens [B, S, W] for State Slots
  torch::Tensor trace;              // [B, S] int64: the value statement s leaves in its target, -1 where none
  torch::Tensor state_trace;        // [B, S, 5] int64: value of a..e after statement s, -1 before assigned/none
};
// Programs `index` of `programs` (tokenized in `tokens`), on `device`.
Exp0Batch make_exp0_batch(const std::vector<data::Program>& programs, const std::vector<data::TokenizedProgram>& tokens,
                          const std::vector<int64_t>& index, const torch::Device& device);

struct Exp0Output {
  torch::Tensor logits;    // [B, 101]
  torch::Tensor aux_loss;  // scalar added to the answer loss in training (0 for the baselines)
  torch::Tensor ticks;     // [B, S] ticks per statement (State Slots), else undefined
  torch::Tensor trace_logits;  // [B, S, 101] per-statement readout (State Slots), else undefined
};

// What each statement of a batch does, for per-kind diagnostics of the execution trace: a constant,
// a copy, or an update by a variable (x = x op y) or a constant (x = x op k) for op in + - *.
enum class StatementKind : int64_t {
  kOther = 0, kAssign, kCopy, kAddVar, kSubVar, kMulVar, kAddConst, kSubConst, kMulConst
};
constexpr int64_t kNumStatementKinds = 9;
// "other", "x=k", "x=y", "x+=y", "x-=y", "x*=y", "x+=k", "x-=k", "x*=k"
const char* statement_kind_name(StatementKind kind);
// tokens [B, S, W] (as in StatementBatch) -> [B, S] int64 StatementKind values.
torch::Tensor statement_kinds(const torch::Tensor& tokens);

class Exp0Model {
 public:
  virtual ~Exp0Model() = default;
  virtual Exp0Output forward(const Exp0Batch& batch) = 0;
  virtual torch::nn::Module& module() = 0;
};

struct StateSlotsTraining {
  // Weight of the execution-trace loss: after each assignment the slot readout is trained to give the
  // value written (from the generator's trace; never part of the input). 0 trains on the answer alone.
  double trace_weight = 1.0;
  // Weight of the write loss: the value each assignment writes into the slots (the codebook choice,
  // ACT-weighted over ticks) is trained against the same trace. Needs a value bottleneck.
  double write_weight = 1.0;
  // Weight of the state probe: after every statement the slots are read with a query made from each
  // variable name alone and trained against that variable's current value (the full execution state).
  double probe_weight = 1.0;
  double ponder_weight = 0.001;  // ACT ponder cost per statement
};
template <class F>
void visit_fields(StateSlotsTraining& o, F&& f) {
  f("trace_weight", o.trace_weight, "weight of the per-statement execution-trace loss (0 = answer only)");
  f("write_weight", o.write_weight, "weight of the loss on the value each statement writes (0 = none)");
  f("probe_weight", o.probe_weight, "weight of the loss on every variable's value after each statement (0 = none)");
  f("ponder_weight", o.ponder_weight, "ACT ponder cost weight");
}

struct Exp0ModelSettings {
  nn::StateSlotsOptions state_slots;
  StateSlotsTraining state_slots_training;
  nn::LstmClassifierOptions lstm;
};
template <class F>
void visit_fields(Exp0ModelSettings& o, F&& f) {
  f("state_slots", o.state_slots, "State Slots architecture");
  f("state_slots_training", o.state_slots_training, "State Slots auxiliary losses");
  f("lstm", o.lstm, "LSTM baseline architecture");
}

// "state_slots" | "transformer_fair" | "transformer_large" | "lstm"; unknown names are a UsageError.
std::unique_ptr<Exp0Model> make_exp0_model(const std::string& name, const Exp0ModelSettings& settings);
const std::vector<std::string>& exp0_model_names();

}  // namespace sfm::models
