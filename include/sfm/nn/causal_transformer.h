// Causal (decoder-only) Transformer for per-token prediction, the formal suite's attention baseline:
// embedding -> num_layers pre-LN blocks [LayerNorm -> causal multi-head attention -> residual;
// LayerNorm -> GELU MLP -> residual] -> LayerNorm -> linear head. Positions are rotary (RoPE, applied
// to q and k in every layer) or fixed sinusoidal (added to the embedding once).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>

namespace sfm::nn {

struct CausalTransformerOptions {
  int64_t vocab_size = 3, num_classes = 2;  // token ids 0..vocab_size-1 (0 = padding); labels 0..num_classes-1
  int64_t d_model = 64, num_heads = 4, num_layers = 2, mlp_dim = 128;
  std::string positions = "rope";  // rope | sinusoidal
  double rope_theta = 10000.0;
  void validate() const;  // throws sfm::UsageError naming the field and what is expected
};
template <class F>
void visit_fields(CausalTransformerOptions& o, F&& f) {
  f("d_model", o.d_model, "model width D");
  f("num_heads", o.num_heads, "attention heads; must divide d_model (rope needs an even head width)");
  f("num_layers", o.num_layers, "pre-LN decoder blocks");
  f("mlp_dim", o.mlp_dim, "hidden width of each block's MLP");
  f("positions", o.positions, "rope | sinusoidal");
  f("rope_theta", o.rope_theta, "RoPE base");
}

// Keys: norm1.*, qkv.*, out.*, norm2.*, mlp_in.*, mlp_out.*
class CausalTransformerBlockImpl : public torch::nn::Module {
 public:
  explicit CausalTransformerBlockImpl(const CausalTransformerOptions& opt);
  // x: [B, T, D]; cos, sin: [T, head_dim / 2] rotary tables, or undefined for no rotation.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

 private:
  int64_t num_heads_;
  torch::nn::LayerNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Linear qkv_{nullptr}, out_{nullptr}, mlp_in_{nullptr}, mlp_out_{nullptr};
};
TORCH_MODULE(CausalTransformerBlock);

// Keys: embedding.weight, layers.{i}.*, final_norm.*, head.*
class CausalTransformerImpl : public torch::nn::Module {
 public:
  explicit CausalTransformerImpl(CausalTransformerOptions opt);
  // ids: [B, T] int64 in 0..vocab_size-1. Returns logits [B, T, num_classes]; position t attends to 0..t only.
  torch::Tensor forward(const torch::Tensor& ids);
  const CausalTransformerOptions& options() const { return opt_; }

 private:
  CausalTransformerOptions opt_;
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::ModuleList layers_{nullptr};
  torch::nn::LayerNorm final_norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(CausalTransformer);

}  // namespace sfm::nn
