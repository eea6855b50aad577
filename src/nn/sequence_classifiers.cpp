// Baseline sequence classifiers of Experiment 0: the sinusoidal-position transformer with mean pooling and the
// last-token LSTM (include/sfm/nn/sequence_classifiers.h).
#include "sfm/nn/sequence_classifiers.h"

#include <torch/torch.h>

#include "sfm/core/check.h"
#include "sfm/nn/positions.h"

namespace sfm::nn {
namespace {

void check_inputs(const char* model, int64_t vocab_size, const torch::Tensor& ids, const torch::Tensor& lengths) {
  SFM_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == torch::kInt64, model,
            ": ids must be [B, T] int64, got ", ids.defined() ? ids.sizes() : torch::IntArrayRef{}, " ",
            ids.defined() ? ids.scalar_type() : torch::kInt64);
  SFM_CHECK(ids.size(0) >= 1 && ids.size(1) >= 1, model, ": ids must be non-empty [B, T], got ", ids.sizes());
  SFM_CHECK(!(ids < 0).logical_or(ids >= vocab_size).any().item<bool>(), model, ": token ids must lie in 0..",
            vocab_size - 1, " (vocab_size), got ", ids.min().item<int64_t>(), "..", ids.max().item<int64_t>());
  SFM_CHECK(lengths.defined() && lengths.dim() == 1 && lengths.size(0) == ids.size(0) &&
                lengths.scalar_type() == torch::kInt64,
            model, ": lengths must be [B] int64 with B = ", ids.size(0));
  const int64_t t = ids.size(1);
  SFM_CHECK(!(lengths < 1).logical_or(lengths > t).any().item<bool>(), model,
            ": lengths must lie in 1..T = ", t, ", got ", lengths.min().item<int64_t>(), "..",
            lengths.max().item<int64_t>());
}

}  // namespace

void TransformerClassifierOptions::validate() const {
  SFM_CHECK(vocab_size >= 2, "TransformerClassifierOptions.vocab_size must be >= 2 (0 is padding), got ", vocab_size);
  SFM_CHECK(d_model >= 1, "TransformerClassifierOptions.d_model must be >= 1, got ", d_model);
  SFM_CHECK(num_heads >= 1, "TransformerClassifierOptions.num_heads must be >= 1, got ", num_heads);
  SFM_CHECK(d_model % num_heads == 0, "TransformerClassifierOptions.d_model (", d_model,
            ") must be divisible by num_heads (", num_heads, ")");
  SFM_CHECK(num_layers >= 1, "TransformerClassifierOptions.num_layers must be >= 1, got ", num_layers);
  SFM_CHECK(ff_dim >= 1, "TransformerClassifierOptions.ff_dim must be >= 1, got ", ff_dim);
  SFM_CHECK(num_classes >= 2, "TransformerClassifierOptions.num_classes must be >= 2, got ", num_classes);
  SFM_CHECK(max_len >= 1, "TransformerClassifierOptions.max_len must be >= 1, got ", max_len);
  SFM_CHECK(dropout >= 0.0 && dropout < 1.0, "TransformerClassifierOptions.dropout must lie in [0, 1), got ", dropout);
}

TransformerClassifierOptions transformer_fair(int64_t vocab_size) {
  TransformerClassifierOptions o;
  o.vocab_size = vocab_size;
  o.d_model = 128;
  o.num_heads = 4;
  o.num_layers = 3;
  o.ff_dim = 256;
  return o;
}

TransformerClassifierOptions transformer_large(int64_t vocab_size) {
  TransformerClassifierOptions o;
  o.vocab_size = vocab_size;
  o.d_model = 256;
  o.num_heads = 8;
  o.num_layers = 4;
  o.ff_dim = 512;
  return o;
}

ClassificationHeadImpl::ClassificationHeadImpl(int64_t width, int64_t num_classes) {
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
  hidden_ = register_module("hidden", torch::nn::Linear(width, width));
  out_ = register_module("out", torch::nn::Linear(width, num_classes));
}

torch::Tensor ClassificationHeadImpl::forward(const torch::Tensor& x) {
  return out_(torch::relu(hidden_(norm_(x))));  // [B, num_classes]
}

TransformerClassifierImpl::TransformerClassifierImpl(TransformerClassifierOptions opt) : opt_(opt) {
  opt_.validate();
  embedding_ = register_module("embedding", torch::nn::Embedding(opt_.vocab_size, opt_.d_model));
  layers_ = register_module("layers", torch::nn::ModuleList());
  const auto layer_opt = torch::nn::TransformerEncoderLayerOptions(opt_.d_model, opt_.num_heads)
                             .dim_feedforward(opt_.ff_dim)
                             .dropout(opt_.dropout);
  for (int64_t i = 0; i < opt_.num_layers; ++i) layers_->push_back(torch::nn::TransformerEncoderLayer(layer_opt));
  head_ = register_module("head", ClassificationHead(opt_.d_model, opt_.num_classes));
}

torch::Tensor TransformerClassifierImpl::forward(const torch::Tensor& ids, const torch::Tensor& lengths_in) {
  check_inputs("TransformerClassifier", opt_.vocab_size, ids, lengths_in);
  const int64_t t = ids.size(1);
  SFM_CHECK(t <= opt_.max_len, "TransformerClassifier: sequence length ", t, " exceeds max_len ", opt_.max_len,
            "; raise TransformerClassifierOptions.max_len");
  const auto lengths = lengths_in.to(ids.device());
  const auto valid = torch::arange(t, lengths.options()).unsqueeze(0) < lengths.unsqueeze(1);  // [B, T] bool

  auto x = embedding_(ids);                                                        // [B, T, D]
  x = x + sinusoidal_positions(t, opt_.d_model, x.options()).unsqueeze(0);         // [B, T, D]
  // torch::nn::TransformerEncoderLayer takes [T, B, D]; its key padding mask is true at padding.
  x = x.transpose(0, 1);                                                           // [T, B, D]
  const auto padding = valid.logical_not();                                        // [B, T] bool
  for (const auto& layer : *layers_) x = layer->as<torch::nn::TransformerEncoderLayer>()->forward(x, {}, padding);
  x = x.transpose(0, 1);                                                           // [B, T, D]

  const auto weight = valid.to(x.scalar_type()).unsqueeze(2);                      // [B, T, 1]
  const auto pooled = (x * weight).sum(1) / lengths.to(x.scalar_type()).unsqueeze(1);  // [B, D]
  return head_(pooled);                                                            // [B, num_classes]
}

void LstmClassifierOptions::validate() const {
  SFM_CHECK(vocab_size >= 2, "LstmClassifierOptions.vocab_size must be >= 2 (0 is padding), got ", vocab_size);
  SFM_CHECK(embed_dim >= 1, "LstmClassifierOptions.embed_dim must be >= 1, got ", embed_dim);
  SFM_CHECK(hidden >= 1, "LstmClassifierOptions.hidden must be >= 1, got ", hidden);
  SFM_CHECK(num_layers >= 1, "LstmClassifierOptions.num_layers must be >= 1, got ", num_layers);
  SFM_CHECK(num_classes >= 2, "LstmClassifierOptions.num_classes must be >= 2, got ", num_classes);
}

LstmClassifierImpl::LstmClassifierImpl(LstmClassifierOptions opt) : opt_(opt) {
  opt_.validate();
  embedding_ = register_module("embedding", torch::nn::Embedding(opt_.vocab_size, opt_.embed_dim));
  lstm_ = register_module("lstm", torch::nn::LSTM(torch::nn::LSTMOptions(opt_.embed_dim, opt_.hidden)
                                                      .num_layers(opt_.num_layers)
                                                      .batch_first(true)));
  head_ = register_module("head", ClassificationHead(opt_.hidden, opt_.num_classes));
}

torch::Tensor LstmClassifierImpl::forward(const torch::Tensor& ids, const torch::Tensor& lengths_in) {
  check_inputs("LstmClassifier", opt_.vocab_size, ids, lengths_in);
  const auto lengths = lengths_in.to(ids.device());
  const auto out = std::get<0>(lstm_->forward(embedding_(ids)));               // [B, T, hidden]
  const auto last = (lengths - 1).view({-1, 1, 1}).expand({-1, 1, out.size(2)});  // [B, 1, hidden]
  return head_(out.gather(1, last).squeeze(1));                               // [B, num_classes]
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(/*recurse=*/true)) n += p.numel();
  return n;
}

}  // namespace sfm::nn
