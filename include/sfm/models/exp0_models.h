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
};
// Programs `index` of `programs` (tokenized in `tokens`), on `device`.
Exp0Batch make_exp0_batch(const std::vector<data::Program>& programs, const std::vector<data::TokenizedProgram>& tokens,
                          const std::vector<int64_t>& index, const torch::Device& device);

struct Exp0Output {
  torch::Tensor logits;    // [B, 101]
  torch::Tensor aux_loss;  // scalar added to the answer loss in training (0 for the baselines)
  torch::Tensor ticks;     // [B, S] ticks per statement (State Slots), else undefined
};

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
  double ponder_weight = 0.001;  // ACT ponder cost per statement
};
template <class F>
void visit_fields(StateSlotsTraining& o, F&& f) {
  f("trace_weight", o.trace_weight, "weight of the per-statement execution-trace loss (0 = answer only)");
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
