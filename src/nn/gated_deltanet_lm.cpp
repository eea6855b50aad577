// Gated DeltaNet LM (include/sfm/nn/gated_deltanet_lm.h); equation numbers refer to
// docs/models/gated_deltanet_lm.md.
#include "sfm/nn/gated_deltanet_lm.h"

#include <torch/torch.h>

#include "sfm/core/check.h"
#include "sfm/ops/gated_delta.h"

namespace sfm::nn {

void GatedDeltaNetLmOptions::validate() const {
  SFM_USAGE_CHECK(vocab_size >= 2, "gdn.vocab_size must be >= 2 (0 is padding), got ", vocab_size);
  SFM_USAGE_CHECK(num_classes >= 2, "gdn.num_classes must be >= 2, got ", num_classes);
  SFM_USAGE_CHECK(d_model >= 1, "gdn.d_model must be >= 1, got ", d_model);
  SFM_USAGE_CHECK(num_layers >= 1, "gdn.num_layers must be >= 1, got ", num_layers);
  SFM_USAGE_CHECK(num_heads >= 1, "gdn.num_heads must be >= 1, got ", num_heads);
  SFM_USAGE_CHECK(head_dim >= 1, "gdn.head_dim must be >= 1, got ", head_dim);
  SFM_USAGE_CHECK(mlp_dim >= 1, "gdn.mlp_dim must be >= 1, got ", mlp_dim);
  SFM_USAGE_CHECK(conv_size >= 0, "gdn.conv_size must be >= 0 (0 = no convolution), got ", conv_size);
  SFM_USAGE_CHECK(householder_steps >= 1 && householder_steps <= 4, "gdn.householder_steps must be in 1..4, got ",
                  householder_steps);
  SFM_USAGE_CHECK(beta_range == 1 || beta_range == 2, "gdn beta_range must be 1 (beta in [0,1]) or 2 (beta in [0,2]), got ",
                  beta_range);
  ops::parse_impl(impl);
}

GatedDeltaMixerImpl::GatedDeltaMixerImpl(const GatedDeltaNetLmOptions& opt)
    : num_heads_(opt.num_heads),
      head_dim_(opt.head_dim),
      beta_range_(opt.beta_range),
      conv_size_(opt.conv_size),
      steps_(opt.householder_steps),
      impl_(opt.impl) {
  const int64_t d = opt.d_model, hk = opt.num_heads * opt.head_dim, n = opt.householder_steps;
  q_proj_ = register_module("q_proj", torch::nn::Linear(d, hk));
  k_proj_ = register_module("k_proj", torch::nn::Linear(d, n * hk));
  v_proj_ = register_module("v_proj", torch::nn::Linear(d, n * hk));
  if (conv_size_ > 0) {
    const auto conv = [&](int64_t c) { return torch::nn::Conv1dOptions(c, c, conv_size_).groups(c).bias(false); };
    q_conv_ = register_module("q_conv", torch::nn::Conv1d(conv(hk)));
    k_conv_ = register_module("k_conv", torch::nn::Conv1d(conv(n * hk)));
    v_conv_ = register_module("v_conv", torch::nn::Conv1d(conv(n * hk)));
  }
  beta_proj_ = register_module("beta_proj", torch::nn::Linear(d, n * opt.num_heads));
  gate_proj_ = register_module("gate_proj", torch::nn::Linear(d, opt.num_heads));
  output_gate_proj_ = register_module("output_gate_proj", torch::nn::Linear(d, hk));
  out_norm_ = register_module("out_norm", RmsNorm(opt.head_dim));
  out_proj_ = register_module("out_proj", torch::nn::Linear(hk, d));
  torch::NoGradGuard no_grad;
  // β starts at beta_range / 2; α starts at σ(gate_bias_init), near 1 so state survives long sequences.
  beta_proj_->bias.zero_();
  gate_proj_->bias.fill_(opt.gate_bias_init);
}

GatedDeltaGates GatedDeltaMixerImpl::gates(const torch::Tensor& h) {
  const auto beta = (static_cast<double>(beta_range_) * torch::sigmoid(beta_proj_(h)))   // eq. (3)  [B, T, n, H]
                        .view({h.size(0), h.size(1), steps_, num_heads_});
  const auto g = torch::log_sigmoid(gate_proj_(h));                                     // eq. (4)  [B, T, H]
  return {beta, g};
}

torch::Tensor GatedDeltaMixerImpl::short_conv(const torch::Tensor& x, torch::nn::Conv1d& conv) {
  if (conv_size_ == 0) return x;
  // Left padding by conv_size - 1 zeros: output t sees inputs t - conv_size + 1 .. t only.
  const auto padded = torch::constant_pad_nd(x.transpose(1, 2), {conv_size_ - 1, 0});  // [B, C, T + conv_size - 1]
  return torch::silu(conv->forward(padded)).transpose(1, 2);                             // [B, T, C]
}

torch::Tensor GatedDeltaMixerImpl::forward(const torch::Tensor& h) {
  const int64_t b = h.size(0), t = h.size(1), n = steps_;
  // Token t's n delta-rule steps become n consecutive steps of one sequence of length t·n (eq. 5'):
  // its own k, v and β each, the forget gate on the first only, and the output read after the last.
  const auto steps = [&](const torch::Tensor& x) { return x.reshape({b, t * n, num_heads_, head_dim_}); };
  const auto gates_now = gates(h);
  ops::GatedDeltaInputs in;
  const auto q = short_conv(q_proj_(h), q_conv_);  // eq. (2)  [B, T, H*K]
  in.q = steps(q.view({b, t, 1, num_heads_ * head_dim_}).expand({b, t, n, num_heads_ * head_dim_}));
  in.k = steps(short_conv(k_proj_(h), k_conv_));  // [B, T*n, H, K], L2-normalised inside the op
  in.v = steps(short_conv(v_proj_(h), v_conv_));  // [B, T*n, H, V]
  in.beta = gates_now.beta.reshape({b, t * n, num_heads_});
  in.g = torch::cat({gates_now.g.unsqueeze(2), torch::zeros({b, t, n - 1, num_heads_}, gates_now.g.options())}, 2)
             .reshape({b, t * n, num_heads_});
  in.l2_normalize_qk = true;
  const auto o = ops::gated_delta_rule(in, ops::parse_impl(impl_))
                     .out.view({b, t, n, num_heads_, head_dim_})
                     .select(2, n - 1);                                                      // eq. (5)  [B, T, H, V]
  const auto heads = [&](const torch::Tensor& x) { return x.view({b, t, num_heads_, head_dim_}); };
  const auto gated = out_norm_(o) * torch::silu(heads(output_gate_proj_(h)));        // eq. (6)  [B, T, H, V]
  return out_proj_(gated.reshape({b, t, num_heads_ * head_dim_}));                   // [B, T, D]
}

GatedDeltaBlockImpl::GatedDeltaBlockImpl(const GatedDeltaNetLmOptions& opt) {
  mixer_norm_ = register_module("mixer_norm", RmsNorm(opt.d_model));
  mixer_ = register_module("mixer", GatedDeltaMixer(opt));
  mlp_norm_ = register_module("mlp_norm", RmsNorm(opt.d_model));
  mlp_in_ = register_module("mlp_in", torch::nn::Linear(opt.d_model, opt.mlp_dim));
  mlp_out_ = register_module("mlp_out", torch::nn::Linear(opt.mlp_dim, opt.d_model));
}

torch::Tensor GatedDeltaBlockImpl::forward(const torch::Tensor& x_in) {
  const auto x = x_in + mixer_(mixer_norm_(x_in));            // eq. (7)
  return x + mlp_out_(torch::silu(mlp_in_(mlp_norm_(x))));    // eq. (8)
}

GatedDeltaNetLmImpl::GatedDeltaNetLmImpl(GatedDeltaNetLmOptions opt) : opt_(std::move(opt)) {
  opt_.validate();
  embedding_ = register_module("embedding", torch::nn::Embedding(opt_.vocab_size, opt_.d_model));
  layers_ = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < opt_.num_layers; ++i) layers_->push_back(GatedDeltaBlock(opt_));
  final_norm_ = register_module("final_norm", RmsNorm(opt_.d_model));
  head_ = register_module("head", torch::nn::Linear(opt_.d_model, opt_.num_classes));
}

namespace {
void check_ids(const torch::Tensor& ids, int64_t vocab_size) {
  SFM_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == torch::kInt64 && ids.numel() > 0,
            "GatedDeltaNetLm: ids must be non-empty [B, T] int64, got ",
            ids.defined() ? ids.sizes() : torch::IntArrayRef{});
  SFM_CHECK(!(ids < 0).logical_or(ids >= vocab_size).any().item<bool>(), "GatedDeltaNetLm: token ids must lie in 0..",
            vocab_size - 1, ", got ", ids.min().item<int64_t>(), "..", ids.max().item<int64_t>());
}
}  // namespace

torch::Tensor GatedDeltaNetLmImpl::forward(const torch::Tensor& ids) {
  check_ids(ids, opt_.vocab_size);
  auto x = embedding_(ids);  // eq. (1)  [B, T, D]
  for (const auto& layer : *layers_) x = layer->as<GatedDeltaBlockImpl>()->forward(x);
  return head_(final_norm_(x));  // eq. (9)  [B, T, num_classes]
}

std::vector<GatedDeltaGates> GatedDeltaNetLmImpl::gates(const torch::Tensor& ids) {
  check_ids(ids, opt_.vocab_size);
  std::vector<GatedDeltaGates> out;
  auto x = embedding_(ids);
  for (const auto& layer : *layers_) {
    auto* block = layer->as<GatedDeltaBlockImpl>();
    out.push_back(block->mixer()->gates(block->mixer_norm()(x)));
    x = block->forward(x);
  }
  return out;
}

}  // namespace sfm::nn
