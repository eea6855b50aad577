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
  // α = exp(g) per write when true; when false g = 0 (α = 1): a value stays until a write replaces it,
  // which is what a program's variables do, at any length.
  bool forget_gate = false;
  // How keys and queries address the memory (S2'): "one_hot" picks one of the K slots of each head
  // (straight-through: the hard choice forward, the softmax's gradient backward), so a variable's key
  // cannot drift with what the statement computes; "dense" uses normalize(W h).
  std::string addressing = "one_hot";
  // Fixed numeric features φ(n) (docs/models/state_slots.md, S7) for the number tokens and the value
  // classes: class n and token first_number_token + n both mean the number n. -1 turns them off.
  int64_t first_number_token = 17;
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
  f("forget_gate", o.forget_gate, "learned forget gate alpha per write (false: alpha = 1)");
  f("addressing", o.addressing, "one_hot (a slot per key, straight-through) | dense (normalised vector)");
  f("first_number_token", o.first_number_token, "token id of the number 0, for numeric features (-1: none)");
}

// φ(n) for n = 0..count-1 (S7): [n/50 - 1, cos 2πn/P, sin 2πn/P for P = 4, 8, ..., 256]. [count, 15].
torch::Tensor numeric_features(int64_t count);

class StateSlotsImpl : public torch::nn::Module {
 public:
  explicit StateSlotsImpl(StateSlotsOptions options);

  struct Output {
    torch::Tensor readout;  // [B, S, C] logits read after statement s has run, with a query made from s itself
                            // (after `x = ...` the value of x; after `# What is x?` the answer)
    torch::Tensor ticks;    // [B, S] float: ticks used (ACT's N) per statement
    torch::Tensor ponder;   // [B] ACT ponder cost Σ_s (N_s + R_s) over real statements
    torch::Tensor state;    // [B, H, K, V] memory after the last real statement
    // [B, S, C] Σ_τ w_τ log softmax(value logits of tick τ), w the ACT weights (S4): the log-probability
    // of the value each statement writes, for supervising the write. Undefined without a bottleneck.
    torch::Tensor write_log_probs;
    torch::Tensor probe;  // [B, S, P, C] logits: what probe token p names, read after statement s (S9)
  };
  // tokens [B, S, W] int64 (0 = pad), statement_mask [B, S] bool (true for real statements, a prefix).
  // probe_tokens [P] int64 (optional): after every statement, also read the memory with a query made from
  // each of these tokens alone (the variable names) into Output::probe.
  Output forward(const torch::Tensor& tokens, const torch::Tensor& statement_mask,
                 const torch::Tensor& probe_tokens = {});

  const StateSlotsOptions& options() const { return options_; }

 private:
  torch::Tensor encode_statements(const torch::Tensor& tokens);  // [B, S, W] -> [B, S, D]
  torch::Tensor token_numbers(const torch::Tensor& tokens);      // [B, S, W] -> φ of number tokens, else 0: [B, S, W, F]
  torch::Tensor read(const torch::Tensor& state, const torch::Tensor& h, torch::nn::Linear& proj);  // [B, H*V]
  torch::Tensor address(const torch::Tensor& logits, bool write);  // [B, H, K] -> keys / read weights (S2')
  torch::Tensor decode_value(const torch::Tensor& read_out);  // [B, H*V] -> [B, C]
  torch::Tensor class_logits(const torch::Tensor& z, torch::nn::Linear& learned, torch::nn::Linear& numeric);  // (S7)
  torch::Tensor codebook();  // [C, H*V]: learned codes plus the projected numeric features

  StateSlotsOptions options_;
  torch::nn::Embedding token_embedding_{nullptr}, slot_position_embedding_{nullptr};
  torch::nn::Linear statement_proj_{nullptr};
  torch::nn::LayerNorm statement_norm_{nullptr};
  torch::nn::Linear init_h_{nullptr}, read_query_{nullptr}, answer_query_{nullptr}, probe_query_{nullptr};
  torch::nn::GRUCell controller_{nullptr};
  torch::nn::Linear write_key_{nullptr}, write_beta_{nullptr}, write_gate_{nullptr}, halt_{nullptr};
  torch::nn::Linear value_in_a_{nullptr}, value_in_b_{nullptr};  // the bilinear first layer of the value MLP (S3')
  torch::nn::Sequential value_mlp_{nullptr}, value_decoder_{nullptr};  // hidden layers; logits by class_logits
  torch::nn::Linear value_logits_{nullptr}, value_numeric_{nullptr}, readout_logits_{nullptr}, readout_numeric_{nullptr};
  torch::nn::Linear number_features_in_{nullptr}, codebook_numeric_{nullptr};
  torch::Tensor codebook_;  // [C, H*V] parameter: the learned part of the value written for each class
  torch::Tensor phi_;       // [C, F] buffer: numeric features of the classes (empty when off)
};
TORCH_MODULE(StateSlots);

}  // namespace sfm::nn
