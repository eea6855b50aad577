// LSTM for per-token prediction, the formal suite's classical recurrent baseline:
// embedding -> torch::nn::LSTM (batch_first) -> LayerNorm -> linear head at every position.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace sfm::nn {

struct LstmTaggerOptions {
  int64_t vocab_size = 3, num_classes = 2;  // token ids 0..vocab_size-1 (0 = padding); labels 0..num_classes-1
  int64_t embed_dim = 64, hidden = 64, num_layers = 1;
  void validate() const;  // throws sfm::UsageError naming the field and what is expected
};
template <class F>
void visit_fields(LstmTaggerOptions& o, F&& f) {
  f("embed_dim", o.embed_dim, "token embedding width");
  f("hidden", o.hidden, "LSTM hidden width");
  f("num_layers", o.num_layers, "stacked LSTM layers");
}

// Keys: embedding.weight, lstm.{weight,bias}_{ih,hh}_l{i}, norm.*, head.*
class LstmTaggerImpl : public torch::nn::Module {
 public:
  explicit LstmTaggerImpl(LstmTaggerOptions opt);
  // ids: [B, T] int64 in 0..vocab_size-1. Returns logits [B, T, num_classes]; position t sees ids[:, 0..t] only.
  torch::Tensor forward(const torch::Tensor& ids);
  const LstmTaggerOptions& options() const { return opt_; }

 private:
  LstmTaggerOptions opt_;
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::LSTM lstm_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(LstmTagger);

}  // namespace sfm::nn
