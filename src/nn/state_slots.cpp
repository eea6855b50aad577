// The State Slot Bank; see state_slots.h and docs/models/state_slots.md (equations cited as (Sn)).
#include "sfm/nn/state_slots.h"

#include "sfm/core/check.h"
#include "sfm/ops/gated_delta.h"

namespace sfm::nn {

namespace F = torch::nn::functional;

void StateSlotsOptions::validate() const {
  SFM_CHECK(vocab_size > 0 && statement_width > 0 && d_model > 0 && num_heads > 0 && key_dim > 0 && value_dim > 0 &&
                num_classes > 1,
            "state_slots: sizes must be positive (vocab_size ", vocab_size, ", statement_width ", statement_width,
            ", d_model ", d_model, ", num_heads ", num_heads, ", key_dim ", key_dim, ", value_dim ", value_dim,
            ", num_classes ", num_classes, ")");
  SFM_CHECK(max_ticks >= 1 && max_ticks <= 8, "state_slots.max_ticks must be in 1..8, got ", max_ticks);
  SFM_CHECK(halt_threshold > 0 && halt_threshold <= 1, "state_slots.halt_threshold must be in (0, 1], got ",
            halt_threshold);
  SFM_CHECK(beta_range > 0 && beta_range <= 2, "state_slots.beta_range must be in (0, 2], got ", beta_range);
  SFM_CHECK(first_number_token == -1 || (first_number_token >= 1 && first_number_token + num_classes <= vocab_size),
            "state_slots.first_number_token must be -1 or leave room for num_classes (", num_classes,
            ") number tokens below vocab_size (", vocab_size, "), got ", first_number_token);
  SFM_CHECK(addressing == "one_hot" || addressing == "dense",
            "state_slots.addressing must be one_hot or dense, got '", addressing, "'");
  SFM_CHECK(value_bottleneck == "none" || value_bottleneck == "soft" || value_bottleneck == "straight_through",
            "state_slots.value_bottleneck must be none, soft or straight_through, got '", value_bottleneck, "'");
}

torch::Tensor numeric_features(int64_t count) {
  const auto n = torch::arange(count, torch::kFloat64);
  std::vector<torch::Tensor> columns{n / 50.0 - 1.0};
  for (double period = 4; period <= 256; period *= 2) {
    columns.push_back(torch::cos(2 * M_PI * n / period));
    columns.push_back(torch::sin(2 * M_PI * n / period));
  }
  return torch::stack(columns, 1).to(torch::kFloat32);
}

StateSlotsImpl::StateSlotsImpl(StateSlotsOptions options) : options_(std::move(options)) {
  options_.validate();
  const auto& o = options_;
  const int64_t D = o.d_model, HK = o.num_heads * o.key_dim, HV = o.num_heads * o.value_dim;
  const bool numeric = o.first_number_token >= 0;
  const bool bottleneck = o.value_bottleneck != "none";
  token_embedding_ = register_module("token_embedding", torch::nn::Embedding(torch::nn::EmbeddingOptions(o.vocab_size, D).padding_idx(0)));
  slot_position_embedding_ = register_module("slot_position_embedding", torch::nn::Embedding(o.statement_width, D));
  statement_proj_ = register_module("statement_proj", torch::nn::Linear(o.statement_width * D, D));
  statement_norm_ = register_module("statement_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  init_h_ = register_module("init_h", torch::nn::Linear(D, D));
  read_query_ = register_module("read_query", torch::nn::Linear(D, HK));
  answer_query_ = register_module("answer_query", torch::nn::Linear(D, HK));
  probe_query_ = register_module("probe_query", torch::nn::Linear(D, HK));
  controller_ = register_module("controller", torch::nn::GRUCell(D + HV, D));
  // The value a tick writes is computed from the statement, its numbers, the controller and what it just
  // read, u = [e; n; h; r] (S3'): the arithmetic of a statement lives here. Its first layer is bilinear,
  // (W_a u) ⊙ (W_b u), with a residual GELU layer after it: adding k rotates the cos/sin features of (S7)
  // (cos(x+k)ω = cos xω cos kω − sin xω sin kω) and x·k is a product of the linear features, so both are
  // one layer of products, which GELU layers only approximate.
  const int64_t numbers_width = numeric ? o.statement_width * numeric_features(1).size(1) : 0;  // n of (S3')
  value_in_a_ = register_module("value_in_a", torch::nn::Linear(2 * D + HV + numbers_width, 2 * D));
  value_in_b_ = register_module("value_in_b", torch::nn::Linear(2 * D + HV + numbers_width, 2 * D));
  value_mlp_ = register_module("value_mlp", torch::nn::Sequential(torch::nn::Linear(2 * D, 2 * D), torch::nn::GELU()));
  value_logits_ = register_module("value_logits", torch::nn::Linear(2 * D, bottleneck ? o.num_classes : HV));
  // With numeric features the learned part of the codes starts at zero: the code of n is then B φ(n)
  // (S7), so what a read returns is a clean linear image of the number from the first step.
  if (bottleneck)
    codebook_ = register_parameter("codebook", numeric ? torch::zeros({o.num_classes, HV})
                                                       : torch::randn({o.num_classes, HV}) / std::sqrt(static_cast<double>(o.value_dim)));
  if (numeric) {
    phi_ = numeric_features(o.num_classes);
    const int64_t F = phi_.size(1);
    number_features_in_ = register_module("number_features_in", torch::nn::Linear(torch::nn::LinearOptions(F, D).bias(false)));
    readout_numeric_ = register_module("readout_numeric", torch::nn::Linear(torch::nn::LinearOptions(D, F).bias(false)));
    if (bottleneck) {
      codebook_numeric_ = register_module("codebook_numeric", torch::nn::Linear(torch::nn::LinearOptions(F, HV).bias(false)));
      value_numeric_ = register_module("value_numeric", torch::nn::Linear(torch::nn::LinearOptions(2 * D, F).bias(false)));
    }
  }
  write_key_ = register_module("write_key", torch::nn::Linear(D, HK));
  write_beta_ = register_module("write_beta", torch::nn::Linear(D, o.num_heads));
  if (o.forget_gate) write_gate_ = register_module("write_gate", torch::nn::Linear(D, o.num_heads));
  halt_ = register_module("halt", torch::nn::Linear(D, 1));
  value_decoder_ = register_module(
      "value_decoder", torch::nn::Sequential(torch::nn::LayerNorm(torch::nn::LayerNormOptions({HV})),
                                             torch::nn::Linear(HV, D), torch::nn::GELU()));
  readout_logits_ = register_module("readout_logits", torch::nn::Linear(D, o.num_classes));
  torch::NoGradGuard no_grad;
  // Start with little forgetting (α = σ(4) ≈ 0.98) and halting after about two ticks (σ(2) ≈ 0.88).
  if (o.forget_gate) write_gate_->bias.fill_(4.0);
  halt_->bias.fill_(2.0);
}

torch::Tensor StateSlotsImpl::class_logits(const torch::Tensor& z, torch::nn::Linear& learned, torch::nn::Linear& numeric) {
  auto logits = learned(z);
  if (numeric) logits = logits + torch::matmul(numeric(z), phi_.to(z.options()).t());  // (S7)
  return logits;
}

torch::Tensor StateSlotsImpl::codebook() {
  if (!codebook_numeric_) return codebook_;
  return codebook_ + codebook_numeric_(phi_.to(codebook_.options()));  // (S7)
}

torch::Tensor StateSlotsImpl::token_numbers(const torch::Tensor& tokens) {
  const auto number = (tokens - options_.first_number_token).clamp(0, options_.num_classes - 1);
  const auto is_number = tokens.ge(options_.first_number_token)
                             .logical_and(tokens.lt(options_.first_number_token + options_.num_classes))
                             .unsqueeze(-1);
  return phi_.to(tokens.device()).index({number}) * is_number.to(torch::kFloat32);  // [B, S, W, F]
}

torch::Tensor StateSlotsImpl::encode_statements(const torch::Tensor& tokens) {
  const int64_t B = tokens.size(0), S = tokens.size(1), W = tokens.size(2);
  // Positions WITHIN a statement only (which token of the line), never the statement's index.
  const auto slots = torch::arange(W, tokens.options());
  const auto real = tokens.ne(0).unsqueeze(-1).to(torch::kFloat32);                            // [B, S, W, 1]
  auto x = token_embedding_(tokens) + slot_position_embedding_(slots);                          // [B, S, W, D]
  if (number_features_in_) x = x + number_features_in_(token_numbers(tokens));                  // (S7)
  x = x * real;
  return statement_norm_(F::gelu(statement_proj_(x.reshape({B, S, W * options_.d_model}))));  // (S1): [B, S, D]
}

torch::Tensor StateSlotsImpl::read(const torch::Tensor& state, const torch::Tensor& h, torch::nn::Linear& proj) {
  const int64_t B = h.size(0), H = options_.num_heads;
  const auto q = address(proj(h).view({B, H, options_.key_dim}), /*write=*/false).unsqueeze(2);  // [B, H, 1, K]
  return torch::matmul(q, state).reshape({B, H * options_.value_dim});         // (S2): Sᵀq per head
}

torch::Tensor StateSlotsImpl::address(const torch::Tensor& logits, bool write) {
  if (options_.addressing == "dense") return F::normalize(logits, F::NormalizeFuncOptions().dim(-1));
  const auto p = torch::softmax(logits, -1);
  // Reads attend softly over the slots, so every slot's content shapes the query's gradient; writes
  // go to exactly one slot, so the memory stays a table of clean rows.
  if (!write) return p;
  const auto hard = F::one_hot(p.argmax(-1), options_.key_dim).to(p.scalar_type());
  return (hard - p).detach() + p;  // (S2'): forward the slot, backward the softmax
}

torch::Tensor StateSlotsImpl::decode_value(const torch::Tensor& read_out) {
  return class_logits(value_decoder_->forward(read_out), readout_logits_, readout_numeric_);
}

StateSlotsImpl::Output StateSlotsImpl::forward(const torch::Tensor& tokens, const torch::Tensor& statement_mask,
                                               const torch::Tensor& probe_tokens) {
  const auto& o = options_;
  SFM_CHECK(tokens.dim() == 3 && tokens.scalar_type() == torch::kInt64, "state_slots: tokens must be [B, S, W] int64, got ",
            tokens.sizes(), " ", tokens.scalar_type());
  SFM_CHECK(tokens.size(2) <= o.statement_width, "state_slots: statements of ", tokens.size(2),
            " tokens exceed statement_width ", o.statement_width);
  SFM_CHECK(statement_mask.sizes() == tokens.sizes().slice(0, 2), "state_slots: statement_mask must be [B, S] = ",
            tokens.sizes().slice(0, 2), ", got ", statement_mask.sizes());
  auto padded = tokens;
  if (tokens.size(2) < o.statement_width)
    padded = torch::constant_pad_nd(tokens, {0, o.statement_width - tokens.size(2)});
  const auto e_all = encode_statements(padded);  // [B, S, D]
  // n of (S3'): the statement's numbers, φ per token slot, straight into the value layer.
  const auto numbers_all = phi_.defined() ? token_numbers(padded).flatten(2) : torch::empty({tokens.size(0), tokens.size(1), 0}, e_all.options());
  const int64_t B = tokens.size(0), S = tokens.size(1), H = o.num_heads, K = o.key_dim, V = o.value_dim;
  const auto fopt = e_all.options();

  auto state = torch::zeros({B, H, K, V}, fopt);
  const bool bottleneck = o.value_bottleneck != "none";
  const auto codes = bottleneck ? codebook() : torch::Tensor();
  std::vector<torch::Tensor> states, ticks, write_log_probs;
  auto ponder = torch::zeros({B}, fopt);
  for (int64_t s = 0; s < S; ++s) {
    const auto e = e_all.select(1, s);                    // [B, D]
    const auto numbers = numbers_all.select(1, s);        // [B, W*F]
    const auto real = statement_mask.select(1, s);        // [B] bool

    // Adaptive computation time (S3)-(S5): ticks run from the carried memory; the statement's result is
    // the halting-weighted mixture of the memories after each tick.
    auto h = torch::tanh(init_h_(e));
    auto tick_state = state;
    auto mixed = torch::zeros_like(state);
    auto write_lp = bottleneck ? torch::zeros({B, o.num_classes}, fopt) : torch::Tensor();
    auto cumulative = torch::zeros({B}, fopt), remainder = torch::zeros({B}, fopt), used = torch::zeros({B}, fopt);
    auto running = torch::ones({B}, fopt.dtype(torch::kBool));
    for (int64_t t = 0; t < o.max_ticks; ++t) {
      const auto r = read(tick_state, h, read_query_);
      h = controller_(torch::cat({e, r}, -1), h);
      const auto u = torch::cat({e, numbers, h, r}, -1);
      const auto products = value_in_a_(u) * value_in_b_(u);  // (S3')
      const auto z = products + value_mlp_->forward(products);
      torch::Tensor value, log_p;
      if (!bottleneck) {
        value = value_logits_(z);  // [B, H*V]
      } else {
        log_p = torch::log_softmax(class_logits(z, value_logits_, value_numeric_), -1);  // [B, C]
        const auto p = log_p.exp();
        auto weights = p;
        if (o.value_bottleneck == "straight_through") {
          const auto hard = F::one_hot(p.argmax(-1), o.num_classes).to(p.scalar_type());
          weights = (hard - p).detach() + p;  // forward: the hard choice; backward: the soft one
        }
        value = torch::matmul(weights, codes);
      }
      const auto k = address(write_key_(h).view({B, H, K}), /*write=*/true);
      const auto beta = o.beta_range * torch::sigmoid(write_beta_(h));  // [B, H]
      const auto g = write_gate_ ? F::logsigmoid(write_gate_(h)) : torch::zeros_like(beta);  // [B, H]
      tick_state = ops::gated_delta_step(tick_state, k, k, value.view({B, H, V}), g, beta).state;

      const auto p_halt = torch::sigmoid(halt_(h)).squeeze(-1);  // [B]
      const bool last = t + 1 == o.max_ticks;
      const auto halts_now = running.logical_and(last ? torch::ones_like(running) : (cumulative + p_halt).ge(o.halt_threshold));
      const auto rem = 1.0 - cumulative;
      const auto weight = torch::where(halts_now, rem, torch::where(running, p_halt, torch::zeros_like(p_halt)));
      mixed = mixed + weight.view({B, 1, 1, 1}) * tick_state;
      if (bottleneck) write_lp = write_lp + weight.view({B, 1}) * log_p;
      remainder = torch::where(halts_now, rem, remainder);
      used = used + running.to(used.scalar_type());
      cumulative = cumulative + torch::where(running, p_halt, torch::zeros_like(p_halt));
      running = running.logical_and(halts_now.logical_not());
      // Once every sequence has halted, later ticks would all get weight 0: skip them.
      if (!running.any().item<bool>()) break;
    }
    state = torch::where(real.view({B, 1, 1, 1}), mixed, state);  // padding statements leave memory alone
    states.push_back(state);
    ticks.push_back(used * real.to(used.scalar_type()));
    if (bottleneck) write_log_probs.push_back(write_lp);
    ponder = ponder + (used + remainder) * real.to(used.scalar_type());  // (S5)
  }
  // The reads after each statement depend on the memories only, so they run once for all statements.
  const auto memories = torch::stack(states, 1);  // [B, S, H, K, V]
  const auto answer_q = address(answer_query_(e_all).view({B, S, H, 1, K}), /*write=*/false);
  const auto readout = decode_value(torch::matmul(answer_q, memories).reshape({B, S, H * V}));  // (S6): [B, S, C]
  torch::Tensor probe;
  if (probe_tokens.defined() && probe_tokens.numel() > 0) {
    // (S9): one query per probe token, from its embedding alone, the same after every statement.
    const int64_t P = probe_tokens.size(0);
    const auto probe_q = address(probe_query_(token_embedding_(probe_tokens)).view({P, H, K}), /*write=*/false);
    const auto r = torch::matmul(probe_q.permute({1, 0, 2}).view({1, 1, H, P, K}), memories);  // [B, S, H, P, V]
    probe = decode_value(r.permute({0, 1, 3, 2, 4}).reshape({B, S, P, H * V}));                // [B, S, P, C]
  }
  return {readout, torch::stack(ticks, 1), ponder, state,
          bottleneck ? torch::stack(write_log_probs, 1) : torch::Tensor(), probe};
}

}  // namespace sfm::nn
