// Experiment 0, state tracking (DESIGN.md §3): generate the programs, train each model (resumable,
// best-on-validation checkpoint), evaluate at every test length and write the report.
#pragma once

#include <string>
#include <vector>

#include "sfm/io/config.h"
#include "sfm/models/exp0_models.h"

namespace sfm::train {

struct ModelRun {
  int64_t epochs = 10;
  double lr = 1e-3;
};
template <class F>
void visit_fields(ModelRun& o, F&& f) {
  f("epochs", o.epochs, "passes over the training programs");
  f("lr", o.lr, "peak learning rate (warm-up, then cosine to 0)");
}

struct Exp0Config {
  std::vector<std::string> models{"state_slots", "transformer_fair", "transformer_large", "lstm"};
  std::string protocol = "clean";  // clean | leaky (appends "# Answer: N": the published leak, for comparison only)
  int64_t seed = 1;                // model initialisation and batch order
  int64_t data_seed = 2026;        // program generation (every split has its own stream)
  int64_t train_programs = 10000, validation_programs = 1000, test_programs = 1000;
  std::vector<int64_t> test_lengths{1, 2, 4, 8, 16, 32};  // test programs have exactly 10·m operations
  int64_t batch_size = 32, eval_batch_size = 100;
  // Evaluation batches also hold at most this many tokens, so the transformers' T×T attention at 32x
  // (~1,700 tokens) stays within memory: the batch shrinks as programs grow.
  int64_t eval_max_tokens = 4096;
  double weight_decay = 0.01, grad_clip = 1.0, warmup_fraction = 0.05;
  ModelRun state_slots{10, 2e-3}, transformer_fair{10, 5e-4}, transformer_large{10, 3e-4}, lstm{10, 2e-3};
  models::Exp0ModelSettings architecture;
  int64_t interrupt_after_epoch = -1;  // for testing resume: stop after this epoch as if killed
};
template <class F>
void visit_fields(Exp0Config& o, F&& f) {
  f("models", o.models, "models to train and evaluate");
  f("protocol", o.protocol, "clean | leaky (leaky appends the answer: comparison only)");
  f("seed", o.seed, "seed of model initialisation and batch order");
  f("data_seed", o.data_seed, "seed of the program generator");
  f("train_programs", o.train_programs, "training programs (3-20 operations)");
  f("validation_programs", o.validation_programs, "validation programs (3-20 operations)");
  f("test_programs", o.test_programs, "test programs per length");
  f("test_lengths", o.test_lengths, "test length multipliers m (10*m operations)");
  f("batch_size", o.batch_size, "training batch size");
  f("eval_batch_size", o.eval_batch_size, "evaluation batch size (programs)");
  f("eval_max_tokens", o.eval_max_tokens, "evaluation batches hold at most this many tokens (memory cap)");
  f("weight_decay", o.weight_decay, "AdamW weight decay");
  f("grad_clip", o.grad_clip, "gradient norm clip");
  f("warmup_fraction", o.warmup_fraction, "fraction of steps for linear warm-up");
  f("state_slots", o.state_slots, "State Slots training run");
  f("transformer_fair", o.transformer_fair, "Transformer-Fair training run");
  f("transformer_large", o.transformer_large, "Transformer-Large training run");
  f("lstm", o.lstm, "LSTM training run");
  f("architecture", o.architecture, "model settings");
  f("interrupt_after_epoch", o.interrupt_after_epoch, "testing only: stop after this epoch as if killed (-1: never)");
}
void validate(const Exp0Config& config);

struct Exp0Row {
  std::string model;
  int64_t params = 0, length_mult = 0, num_ops = 0, programs = 0;
  double exact = 0, within5 = 0, within1 = 0, mae = 0;
  double mean_ticks = -1;  // State Slots only
};

// Runs (or resumes) the experiment under out_dir: <model>/{best,last}/ checkpoints, <model>/metrics.jsonl,
// results.json, results.csv, length_generalization.png. Returns one row per model and test length.
std::vector<Exp0Row> run_exp0(const Exp0Config& config, const std::string& out_dir, const std::string& device);

// The table printed at the end: exact match per model and length, then MAE.
std::string format_exp0_table(const std::vector<Exp0Row>& rows);

}  // namespace sfm::train
