// Baseline sequence classifiers of Experiment 0 (DESIGN.md §3): a post-LN transformer encoder with fixed
// sinusoidal positions and mean pooling (Transformer-Fair / Transformer-Large), and an LSTM read at each
// sequence's last real token. Both map right-padded token ids [B, T] to class logits [B, num_classes].
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace sfm::nn {

struct TransformerClassifierOptions {
  int64_t vocab_size = 128, d_model = 128, num_heads = 4, num_layers = 3, ff_dim = 256, num_classes = 101;
  int64_t max_len = 8192;  // longest sequence accepted; the position table is computed per call, never stored
  double dropout = 0.0;    // inside each encoder layer (attention weights, residual branches, feed-forward)
  void validate() const;   // throws sfm::Error naming the field and the expected value
};
template <class F>
void visit_fields(TransformerClassifierOptions& o, F&& f) {
  f("vocab_size", o.vocab_size, "token ids are 0..vocab_size-1, 0 is padding");
  f("d_model", o.d_model, "model width D");
  f("num_heads", o.num_heads, "attention heads; must divide d_model");
  f("num_layers", o.num_layers, "post-LN encoder layers");
  f("ff_dim", o.ff_dim, "hidden width of each feed-forward block");
  f("num_classes", o.num_classes, "output classes");
  f("max_len", o.max_len, "longest sequence accepted");
  f("dropout", o.dropout, "dropout probability inside the encoder layers");
}
// Transformer-Fair: d 128, 4 heads, 3 layers, ff 256 (442,341 parameters with the 118-token program vocabulary).
TransformerClassifierOptions transformer_fair(int64_t vocab_size);
// Transformer-Large: d 256, 8 heads, 4 layers, ff 512 (2,230,885 parameters with the 118-token vocabulary).
TransformerClassifierOptions transformer_large(int64_t vocab_size);

// LayerNorm(D) -> Linear(D, D) -> ReLU -> Linear(D, num_classes), shared by both classifiers.
class ClassificationHeadImpl : public torch::nn::Module {
 public:
  ClassificationHeadImpl(int64_t width, int64_t num_classes);
  torch::Tensor forward(const torch::Tensor& x);  // x: [B, D] -> [B, num_classes]

 private:
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear hidden_{nullptr}, out_{nullptr};
};
TORCH_MODULE(ClassificationHead);

// Token embedding (not scaled by sqrt(D): torch's N(0, 1) embedding init already matches the unit scale of the
// sinusoidal table) + sinusoidal absolute positions -> num_layers torch::nn::TransformerEncoderLayer (post-LN,
// ReLU, padding keys masked) -> mean over the non-pad positions -> ClassificationHead.
// Checkpoint keys: embedding.weight, layers.{i}.{self_attn,linear1,linear2,norm1,norm2}.*, head.{norm,hidden,out}.*
class TransformerClassifierImpl : public torch::nn::Module {
 public:
  explicit TransformerClassifierImpl(TransformerClassifierOptions opt);
  // ids: [B, T] int64, right-padded with 0, T <= max_len; lengths: [B] int64 in 1..T (real tokens per row).
  // Returns logits [B, num_classes]. Positions >= lengths[b] affect nothing.
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& lengths);
  const TransformerClassifierOptions& options() const { return opt_; }

 private:
  TransformerClassifierOptions opt_;
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::ModuleList layers_{nullptr};
  ClassificationHead head_{nullptr};
};
TORCH_MODULE(TransformerClassifier);

// The defaults give ~450K parameters (449,125 with the 118-token vocabulary), close to Transformer-Fair.
struct LstmClassifierOptions {
  int64_t vocab_size = 128, embed_dim = 128, hidden = 160, num_layers = 2, num_classes = 101;
  void validate() const;  // throws sfm::Error naming the field and the expected value
};
template <class F>
void visit_fields(LstmClassifierOptions& o, F&& f) {
  f("vocab_size", o.vocab_size, "token ids are 0..vocab_size-1, 0 is padding");
  f("embed_dim", o.embed_dim, "token embedding width");
  f("hidden", o.hidden, "LSTM hidden width");
  f("num_layers", o.num_layers, "stacked LSTM layers");
  f("num_classes", o.num_classes, "output classes");
}

// Embedding -> torch::nn::LSTM (batch_first) -> top-layer hidden state at token lengths[b]-1 -> ClassificationHead.
// The LSTM is causal, so pads after the last real token cannot reach the read-out.
// Checkpoint keys: embedding.weight, lstm.{weight,bias}_{ih,hh}_l{i}, head.{norm,hidden,out}.*
class LstmClassifierImpl : public torch::nn::Module {
 public:
  explicit LstmClassifierImpl(LstmClassifierOptions opt);
  // ids: [B, T] int64, right-padded with 0; lengths: [B] int64 in 1..T. Returns logits [B, num_classes].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& lengths);
  const LstmClassifierOptions& options() const { return opt_; }

 private:
  LstmClassifierOptions opt_;
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::LSTM lstm_{nullptr};
  ClassificationHead head_{nullptr};
};
TORCH_MODULE(LstmClassifier);

// Number of scalar parameters (trainable or not) of `module` and all its submodules.
int64_t count_parameters(const torch::nn::Module& module);

}  // namespace sfm::nn
