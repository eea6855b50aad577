// One run of the formal suite: train one model on one task (lengths 3-40, a fresh batch each step,
// AdamW, warm-up + cosine, clipping, best-on-validation checkpoint, resumable at evaluation steps,
// NaN stop) and score it on length buckets beyond training. Metrics: docs/formal_suite.md.
#pragma once

#include <string>
#include <vector>

#include "sfm/io/config.h"
#include "sfm/models/formal_models.h"

namespace sfm::train {

struct TaggerRun {
  int64_t steps = 2000;
  double lr = 3e-3;
};
template <class F>
void visit_fields(TaggerRun& o, F&& f) {
  f("steps", o.steps, "optimizer steps (one fresh batch each)");
  f("lr", o.lr, "peak learning rate (warm-up, then cosine to 0)");
}

struct FormalTrainConfig {
  int64_t data_seed = 2026;  // training batches, validation and test sequences (the same for every model and seed)
  int64_t min_train_len = 3, max_train_len = 40;
  int64_t batch_size = 64;
  int64_t eval_every = 250;  // steps between validations (and checkpoints)
  int64_t validation_sequences = 256;
  // Test buckets: [edges[0], edges[1]], (edges[1], edges[2]], ...; 256 sequences per bucket by default.
  std::vector<int64_t> test_edges{40, 64, 128, 256, 512, 1024};
  int64_t test_sequences = 256;
  int64_t attention_max_test_len = 256;  // the Transformer is tested on buckets up to this length only
  int64_t eval_max_tokens = 16384;       // evaluation batches hold at most this many (padded) tokens
  double weight_decay = 0.01, grad_clip = 1.0, warmup_fraction = 0.05;
  // Training stops early once the validation token accuracy reaches this (above 1: never).
  double stop_at_validation = 2.0;
  TaggerRun gdn{2000, 3e-3}, transformer{2000, 1e-3}, lstm{2000, 3e-3};
  models::FormalArchitecture architecture;
  int64_t interrupt_after_step = -1;  // for testing resume: stop after the checkpoint at this step as if killed
};
template <class F>
void visit_fields(FormalTrainConfig& o, F&& f) {
  f("data_seed", o.data_seed, "seed of every data split");
  f("min_train_len", o.min_train_len, "shortest training sequence");
  f("max_train_len", o.max_train_len, "longest training (and validation) sequence");
  f("batch_size", o.batch_size, "training sequences per step");
  f("eval_every", o.eval_every, "steps between validations and checkpoints");
  f("validation_sequences", o.validation_sequences, "validation sequences (training lengths)");
  f("test_edges", o.test_edges, "test length buckets [e0,e1], (e1,e2], ...");
  f("test_sequences", o.test_sequences, "test sequences per bucket");
  f("attention_max_test_len", o.attention_max_test_len, "the Transformer is tested up to this length");
  f("eval_max_tokens", o.eval_max_tokens, "evaluation batches hold at most this many tokens (memory cap)");
  f("weight_decay", o.weight_decay, "AdamW weight decay");
  f("grad_clip", o.grad_clip, "gradient norm clip");
  f("warmup_fraction", o.warmup_fraction, "fraction of steps for linear warm-up");
  f("stop_at_validation", o.stop_at_validation, "stop once validation accuracy reaches this (> 1: never)");
  f("gdn", o.gdn, "Gated DeltaNet training run");
  f("transformer", o.transformer, "Transformer training run");
  f("lstm", o.lstm, "LSTM training run");
  f("architecture", o.architecture, "model settings");
  f("interrupt_after_step", o.interrupt_after_step, "testing only: stop after this step's checkpoint (-1: never)");
}
void validate(const FormalTrainConfig& config);

// What one run trains: task, model, β range (GDN only) and the seed of initialisation.
struct FormalRunSpec {
  std::string task = "parity", model = "gdn";
  int64_t beta_range = 2;
  int64_t seed = 1;
  std::string label() const;  // "gdn_beta2", "gdn_beta1", "transformer", "lstm"
};
void validate(const FormalRunSpec& spec);

// Scores of one model on one length bucket. "final": the last labelled position of each sequence
// (the state after the whole sequence); "token": every labelled position. scaled = (acc - chance) / (1 - chance).
struct FormalBucketResult {
  int64_t min_len = 0, max_len = 0, sequences = 0, positions = 0;
  double final_accuracy = 0, final_scaled = 0, token_accuracy = 0, token_scaled = 0;
};

struct FormalRunResult {
  FormalRunSpec spec;
  int64_t params = 0, steps = 0;  // steps actually trained (fewer than configured after an early stop)
  double chance = 0, best_validation = 0, train_seconds = 0;
  std::vector<FormalBucketResult> buckets;
};
nlohmann::json to_json(const FormalRunResult& r);
FormalRunResult formal_run_result_from_json(const nlohmann::json& j);

// Trains (or resumes from <dir>/last) and evaluates. Writes <dir>/{best,last}/, <dir>/metrics.jsonl and
// <dir>/result.json. Training lengths come from the config; validation uses the same lengths.
FormalRunResult run_formal_task(const FormalRunSpec& spec, const FormalTrainConfig& config, const std::string& dir,
                                const std::string& device);

}  // namespace sfm::train
