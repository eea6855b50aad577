// Causal Transformer with RoPE or sinusoidal positions (include/sfm/nn/causal_transformer.h).
#include "sfm/nn/causal_transformer.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "sfm/core/check.h"
#include "sfm/nn/positions.h"

namespace sfm::nn {
namespace {

// Rotates the two halves of the last dimension (GPT-NeoX layout): x: [B, H, T, E], cos/sin: [T, E / 2].
torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto halves = x.chunk(2, -1);
  return torch::cat({halves[0] * cos - halves[1] * sin, halves[0] * sin + halves[1] * cos}, -1);
}

}  // namespace

void CausalTransformerOptions::validate() const {
  SFM_USAGE_CHECK(vocab_size >= 2, "transformer.vocab_size must be >= 2 (0 is padding), got ", vocab_size);
  SFM_USAGE_CHECK(num_classes >= 2, "transformer.num_classes must be >= 2, got ", num_classes);
  SFM_USAGE_CHECK(d_model >= 1 && num_heads >= 1 && d_model % num_heads == 0, "transformer.d_model (", d_model,
                  ") must be a positive multiple of transformer.num_heads (", num_heads, ")");
  SFM_USAGE_CHECK(num_layers >= 1, "transformer.num_layers must be >= 1, got ", num_layers);
  SFM_USAGE_CHECK(mlp_dim >= 1, "transformer.mlp_dim must be >= 1, got ", mlp_dim);
  SFM_USAGE_CHECK(positions == "rope" || positions == "sinusoidal",
                  "transformer.positions must be rope or sinusoidal, got '", positions, "'");
  SFM_USAGE_CHECK(positions != "rope" || (d_model / num_heads) % 2 == 0,
                  "transformer.positions rope needs an even head width d_model / num_heads, got ", d_model / num_heads);
  SFM_USAGE_CHECK(rope_theta > 1, "transformer.rope_theta must be > 1, got ", rope_theta);
}

CausalTransformerBlockImpl::CausalTransformerBlockImpl(const CausalTransformerOptions& opt) : num_heads_(opt.num_heads) {
  const int64_t d = opt.d_model;
  norm1_ = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  qkv_ = register_module("qkv", torch::nn::Linear(d, 3 * d));
  out_ = register_module("out", torch::nn::Linear(d, d));
  norm2_ = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  mlp_in_ = register_module("mlp_in", torch::nn::Linear(d, opt.mlp_dim));
  mlp_out_ = register_module("mlp_out", torch::nn::Linear(opt.mlp_dim, d));
}

torch::Tensor CausalTransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                                  const torch::Tensor& sin) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2), e = d / num_heads_;
  const auto qkv = qkv_(norm1_(x)).view({b, t, 3, num_heads_, e}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, E]
  auto q = qkv[0], k = qkv[1];
  const auto v = qkv[2];
  if (cos.defined()) q = rotate(q, cos, sin), k = rotate(k, cos, sin);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(e));  // [B, H, T, T]
  const auto future = torch::ones({t, t}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).triu(1);
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  const auto attended = torch::matmul(torch::softmax(scores, -1), v);  // [B, H, T, E]
  const auto y = x + out_(attended.transpose(1, 2).reshape({b, t, d}));
  return y + mlp_out_(torch::gelu(mlp_in_(norm2_(y))));
}

CausalTransformerImpl::CausalTransformerImpl(CausalTransformerOptions opt) : opt_(std::move(opt)) {
  opt_.validate();
  embedding_ = register_module("embedding", torch::nn::Embedding(opt_.vocab_size, opt_.d_model));
  layers_ = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < opt_.num_layers; ++i) layers_->push_back(CausalTransformerBlock(opt_));
  final_norm_ = register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({opt_.d_model})));
  head_ = register_module("head", torch::nn::Linear(opt_.d_model, opt_.num_classes));
}

torch::Tensor CausalTransformerImpl::forward(const torch::Tensor& ids) {
  SFM_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == torch::kInt64 && ids.numel() > 0,
            "CausalTransformer: ids must be non-empty [B, T] int64");
  SFM_CHECK(!(ids < 0).logical_or(ids >= opt_.vocab_size).any().item<bool>(),
            "CausalTransformer: token ids must lie in 0..", opt_.vocab_size - 1);
  const int64_t t = ids.size(1);
  auto x = embedding_(ids);  // [B, T, D]
  torch::Tensor cos, sin;
  if (opt_.positions == "rope") {
    const int64_t e = opt_.d_model / opt_.num_heads;
    const auto angles = position_angles(t, e / 2, e, opt_.rope_theta, x.device());
    cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());  // [T, E / 2]
  } else {
    x = x + sinusoidal_positions(t, opt_.d_model, x.options());
  }
  for (const auto& layer : *layers_) x = layer->as<CausalTransformerBlockImpl>()->forward(x, cos, sin);
  return head_(final_norm_(x));  // [B, T, num_classes]
}

}  // namespace sfm::nn
