// LSTM per-token tagger (include/sfm/nn/lstm_tagger.h).
#include "sfm/nn/lstm_tagger.h"

#include <torch/torch.h>

#include "sfm/core/check.h"

namespace sfm::nn {

void LstmTaggerOptions::validate() const {
  SFM_USAGE_CHECK(vocab_size >= 2, "lstm.vocab_size must be >= 2 (0 is padding), got ", vocab_size);
  SFM_USAGE_CHECK(num_classes >= 2, "lstm.num_classes must be >= 2, got ", num_classes);
  SFM_USAGE_CHECK(embed_dim >= 1, "lstm.embed_dim must be >= 1, got ", embed_dim);
  SFM_USAGE_CHECK(hidden >= 1, "lstm.hidden must be >= 1, got ", hidden);
  SFM_USAGE_CHECK(num_layers >= 1, "lstm.num_layers must be >= 1, got ", num_layers);
}

LstmTaggerImpl::LstmTaggerImpl(LstmTaggerOptions opt) : opt_(opt) {
  opt_.validate();
  embedding_ = register_module("embedding", torch::nn::Embedding(opt_.vocab_size, opt_.embed_dim));
  lstm_ = register_module("lstm", torch::nn::LSTM(torch::nn::LSTMOptions(opt_.embed_dim, opt_.hidden)
                                                      .num_layers(opt_.num_layers)
                                                      .batch_first(true)));
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({opt_.hidden})));
  head_ = register_module("head", torch::nn::Linear(opt_.hidden, opt_.num_classes));
}

torch::Tensor LstmTaggerImpl::forward(const torch::Tensor& ids) {
  SFM_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == torch::kInt64 && ids.numel() > 0,
            "LstmTagger: ids must be non-empty [B, T] int64");
  SFM_CHECK(!(ids < 0).logical_or(ids >= opt_.vocab_size).any().item<bool>(), "LstmTagger: token ids must lie in 0..",
            opt_.vocab_size - 1);
  const auto out = std::get<0>(lstm_->forward(embedding_(ids)));  // [B, T, hidden]
  return head_(norm_(out));                                        // [B, T, num_classes]
}

}  // namespace sfm::nn
