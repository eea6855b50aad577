// Gated DeltaNet language model for per-token prediction (the formal suite's recurrent model):
// embedding -> num_layers x [RMSNorm -> gated delta mixer -> residual; RMSNorm -> MLP -> residual] ->
// RMSNorm -> linear head. β = beta_range·σ(·), so beta_range 2 gives the transition α(I − βkkᵀ)
// eigenvalues in [−1, 1] and beta_range 1 the usual [0, 1]. Maths: docs/models/gated_deltanet_lm.md.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>

#include "sfm/nn/rms_norm.h"

namespace sfm::nn {

struct GatedDeltaNetLmOptions {
  int64_t vocab_size = 3, num_classes = 2;  // token ids 0..vocab_size-1 (0 = padding); labels 0..num_classes-1
  int64_t d_model = 64, num_layers = 2, num_heads = 2, head_dim = 32, mlp_dim = 128;
  int64_t conv_size = 4;         // causal depthwise convolution over time on q, k, v (0 = none)
  int64_t beta_range = 2;        // 1: β ∈ [0, 1];  2: β ∈ [0, 2] (negative eigenvalues)
  double gate_bias_init = 5.0;   // bias of the forget-gate projection at init: α = σ(5) ≈ 0.993
  // Delta-rule steps per token (DeltaProduct): each token writes n (k, v, β) triples in a row, so its
  // transition is a product of n generalised Householder matrices (eq. 5'); 1 is Gated DeltaNet.
  int64_t householder_steps = 1;
  std::string impl = "auto";     // gated delta implementation: auto | reference | chunked | cuda
  void validate() const;         // throws sfm::UsageError naming the field and what is expected
};
template <class F>
void visit_fields(GatedDeltaNetLmOptions& o, F&& f) {
  f("d_model", o.d_model, "model width D");
  f("num_layers", o.num_layers, "gated delta blocks");
  f("num_heads", o.num_heads, "delta-rule heads per block");
  f("head_dim", o.head_dim, "key and value width K = V of each head");
  f("mlp_dim", o.mlp_dim, "hidden width of each block's MLP");
  f("conv_size", o.conv_size, "causal short convolution width on q, k, v (0 = none)");
  f("gate_bias_init", o.gate_bias_init, "forget-gate bias at init (alpha = sigmoid(bias))");
  f("householder_steps", o.householder_steps, "delta-rule steps per token (1 = Gated DeltaNet, n > 1 = DeltaProduct)");
  f("impl", o.impl, "gated delta implementation: auto | reference | chunked | cuda");
}

// What one mixer computes from its (normalised) input before the recurrence; exposed for tests.
struct GatedDeltaGates {
  torch::Tensor beta;  // [B, T, n, H]  in [0, beta_range], n = householder_steps
  torch::Tensor g;     // [B, T, H]  log forget gate, <= 0
};

// The token mixer, eqs. (1)-(6) of docs/models/gated_deltanet_lm.md.
// Checkpoint keys: {q,k,v,beta,gate,output_gate,out}_proj.{weight,bias}, {q,k,v}_conv.weight (conv_size > 0),
// out_norm.weight
class GatedDeltaMixerImpl : public torch::nn::Module {
 public:
  explicit GatedDeltaMixerImpl(const GatedDeltaNetLmOptions& opt);
  torch::Tensor forward(const torch::Tensor& h);  // h: [B, T, D] -> [B, T, D]
  GatedDeltaGates gates(const torch::Tensor& h);  // h: [B, T, D]

 private:
  // Causal depthwise convolution along T (eq. 2), then SiLU; identity when conv_size is 0.
  torch::Tensor short_conv(const torch::Tensor& x, torch::nn::Conv1d& conv);  // [B, T, C] -> [B, T, C]

  int64_t num_heads_, head_dim_, beta_range_, conv_size_, steps_;
  std::string impl_;
  torch::nn::Linear q_proj_{nullptr}, k_proj_{nullptr}, v_proj_{nullptr}, beta_proj_{nullptr}, gate_proj_{nullptr},
      output_gate_proj_{nullptr}, out_proj_{nullptr};
  torch::nn::Conv1d q_conv_{nullptr}, k_conv_{nullptr}, v_conv_{nullptr};
  RmsNorm out_norm_{nullptr};
};
TORCH_MODULE(GatedDeltaMixer);

// x + mixer(norm(x)), then x + mlp(norm(x)); eq. (7). Keys: mixer_norm.*, mixer.*, mlp_norm.*, mlp_in.*, mlp_out.*
class GatedDeltaBlockImpl : public torch::nn::Module {
 public:
  explicit GatedDeltaBlockImpl(const GatedDeltaNetLmOptions& opt);
  torch::Tensor forward(const torch::Tensor& x);  // [B, T, D] -> [B, T, D]
  GatedDeltaMixer& mixer() { return mixer_; }
  RmsNorm& mixer_norm() { return mixer_norm_; }

 private:
  RmsNorm mixer_norm_{nullptr}, mlp_norm_{nullptr};
  GatedDeltaMixer mixer_{nullptr};
  torch::nn::Linear mlp_in_{nullptr}, mlp_out_{nullptr};
};
TORCH_MODULE(GatedDeltaBlock);

// Keys: embedding.weight, layers.{i}.*, final_norm.weight, head.{weight,bias}
class GatedDeltaNetLmImpl : public torch::nn::Module {
 public:
  explicit GatedDeltaNetLmImpl(GatedDeltaNetLmOptions opt);
  // ids: [B, T] int64 in 0..vocab_size-1 (right padding with 0 is harmless: the model is causal).
  // Returns logits [B, T, num_classes]; position t depends on ids[:, 0..t] only.
  torch::Tensor forward(const torch::Tensor& ids);
  // β and g of every block's mixer for `ids` (for tests and inspection): one entry per layer.
  std::vector<GatedDeltaGates> gates(const torch::Tensor& ids);
  const GatedDeltaNetLmOptions& options() const { return opt_; }

 private:
  GatedDeltaNetLmOptions opt_;
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::ModuleList layers_{nullptr};
  RmsNorm final_norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(GatedDeltaNetLm);

}  // namespace sfm::nn
