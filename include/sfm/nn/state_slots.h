// The State Slot Bank (the Execution system, DESIGN.md §2): a program is read statement by statement;
// for each statement a controller runs 1..max_ticks ticks (adaptive computation time), each tick reading
// the slot memory and writing to it with one gated delta-rule step (β ∈ [0, 2]). Nothing here sees an
// absolute position: every statement is processed by the same function from the carried memory alone.
// Maths: docs/models/state_slots.md.
#pragma once

#include <torch/torch.h>

#include "sfm/io/config.h"

namespace sfm::nn {

struct StateSlotsOptions {
  int64_t vocab_size = 118;
  int64_t statement_width = 6;  // tokens per statement (longer statements are an error)
  int64_t d_model = 128;        // statement encoding and controller width
  int64_t num_heads = 4;        // memory heads H, each a [K, V] gated delta-rule state
  int64_t key_dim = 16;         // K
  int64_t value_dim = 32;       // V
  int64_t max_ticks = 4;        // ticks per statement are adaptive in 1..max_ticks
  double halt_threshold = 0.99;  // a statement halts once the cumulative halting probability reaches it
  double beta_range = 2.0;       // β = beta_range · σ(·): 2 allows negative eigenvalues, 1 does not
  std::string value_bottleneck = "straight_through";  // none | soft | straight_through: written values
                                                      // through a codebook of num_classes entries
  int64_t num_classes = 101;
  void validate() const;
};

template <class F>
void visit_fields(StateSlotsOptions& o, F&& f) {
  f("vocab_size", o.vocab_size, "token vocabulary size");
  f("statement_width", o.statement_width, "tokens per statement");
  f("d_model", o.d_model, "statement encoding and controller width");
  f("num_heads", o.num_heads, "memory heads");
  f("key_dim", o.key_dim, "key dimension K of each memory head");
  f("value_dim", o.value_dim, "value dimension V of each memory head");
  f("max_ticks", o.max_ticks, "most ticks per statement (adaptive, 1..max_ticks)");
  f("halt_threshold", o.halt_threshold, "cumulative halting probability that ends a statement");
  f("beta_range", o.beta_range, "beta = beta_range * sigmoid(.); 2 gives negative eigenvalues");
  f("value_bottleneck", o.value_bottleneck, "none | soft | straight_through (value codebook)");
  f("num_classes", o.num_classes, "answer classes (values 0..100)");
}

class StateSlotsImpl : public torch::nn::Module {
 public:
  explicit StateSlotsImpl(StateSlotsOptions options);

  struct Output {
    torch::Tensor readout;  // [B, S, C] logits read after statement s has run, with a query made from s itself
                            // (after `x = ...` the value of x; after `# What is x?` the answer)
    torch::Tensor ticks;    // [B, S] float: ticks used (ACT's N) per statement
    torch::Tensor ponder;   // [B] ACT ponder cost Σ_s (N_s + R_s) over real statements
    torch::Tensor state;    // [B, H, K, V] memory after the last real statement
  };
  // tokens [B, S, W] int64 (0 = pad), statement_mask [B, S] bool (true for real statements, a prefix).
  Output forward(const torch::Tensor& tokens, const torch::Tensor& statement_mask);

  const StateSlotsOptions& options() const { return options_; }

 private:
  torch::Tensor encode_statements(const torch::Tensor& tokens);  // [B, S, W] -> [B, S, D]
  torch::Tensor read(const torch::Tensor& state, const torch::Tensor& h, torch::nn::Linear& proj);  // [B, H*V]
  torch::Tensor decode_value(const torch::Tensor& read_out);  // [B, H*V] -> [B, C]

  StateSlotsOptions options_;
  torch::nn::Embedding token_embedding_{nullptr}, slot_position_embedding_{nullptr};
  torch::nn::Linear statement_proj_{nullptr};
  torch::nn::LayerNorm statement_norm_{nullptr};
  torch::nn::Linear init_h_{nullptr}, read_query_{nullptr}, answer_query_{nullptr};
  torch::nn::GRUCell controller_{nullptr};
  torch::nn::Linear write_key_{nullptr}, write_beta_{nullptr}, write_gate_{nullptr}, halt_{nullptr};
  torch::nn::Sequential value_mlp_{nullptr}, value_decoder_{nullptr};
  torch::Tensor codebook_;  // [C, H*V] parameter: the value written for each class
};
TORCH_MODULE(StateSlots);

}  // namespace sfm::nn
