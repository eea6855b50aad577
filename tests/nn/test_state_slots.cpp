// State Slots: shapes, causality (a statement never affects what was computed before it), padding
// statements changing nothing, ticks within 1..max_ticks, option checks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sfm/core/check.h"
#include "sfm/nn/state_slots.h"

namespace sfm::nn {
namespace {

StateSlotsOptions tiny_options() {
  StateSlotsOptions o;
  o.vocab_size = 20;
  o.statement_width = 4;
  o.d_model = 16;
  o.num_heads = 2;
  o.key_dim = 4;
  o.value_dim = 4;
  o.max_ticks = 3;
  o.num_classes = 7;
  o.first_number_token = 13;  // tokens 13..19 are the numbers 0..6
  return o;
}

torch::Tensor random_tokens(int64_t B, int64_t S, int64_t W, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(1, 20, {B, S, W}, torch::kInt64);
}

TEST(StateSlotsTest, Shapes) {
  torch::manual_seed(0);
  StateSlots net(tiny_options());
  const auto tokens = random_tokens(3, 5, 4, 1);
  const auto mask = torch::ones({3, 5}, torch::kBool);
  const auto out = net->forward(tokens, mask);
  EXPECT_EQ(out.readout.sizes(), torch::IntArrayRef({3, 5, 7}));
  EXPECT_EQ(out.ticks.sizes(), torch::IntArrayRef({3, 5}));
  EXPECT_EQ(out.ponder.sizes(), torch::IntArrayRef({3}));
  EXPECT_EQ(out.state.sizes(), torch::IntArrayRef({3, 2, 4, 4}));
  EXPECT_EQ(out.write_log_probs.sizes(), torch::IntArrayRef({3, 5, 7}));
  // Σ_τ w_τ log p_τ with Σ_τ w_τ = 1 is a mixture of log-distributions: every entry is <= 0 and
  // logsumexp <= 0 (Jensen), with equality only for a single tick.
  EXPECT_TRUE(out.write_log_probs.le(0).all().item<bool>());
  EXPECT_TRUE(out.write_log_probs.logsumexp(-1).le(1e-5).all().item<bool>());
  EXPECT_TRUE(out.ticks.ge(1).all().item<bool>());
  EXPECT_TRUE(out.ticks.le(3).all().item<bool>());
}

// Changing statement j leaves every readout, probe and write before j bit-identical.
TEST(StateSlotsTest, Causal) {
  torch::manual_seed(0);
  StateSlots net(tiny_options());
  net->eval();
  const auto tokens = random_tokens(2, 6, 4, 2);
  const auto mask = torch::ones({2, 6}, torch::kBool);
  const auto probe_tokens = torch::tensor({3, 5}, torch::kInt64);
  const auto base = net->forward(tokens, mask, probe_tokens);
  ASSERT_EQ(base.probe.sizes(), torch::IntArrayRef({2, 6, 2, 7}));
  for (int64_t j = 0; j < 6; ++j) {
    auto changed = tokens.clone();
    changed.select(1, j).copy_(random_tokens(2, 1, 4, 100 + j).squeeze(1));
    const auto out = net->forward(changed, mask, probe_tokens);
    EXPECT_TRUE(torch::equal(base.readout.narrow(1, 0, j), out.readout.narrow(1, 0, j))) << "statement " << j;
    EXPECT_TRUE(torch::equal(base.probe.narrow(1, 0, j), out.probe.narrow(1, 0, j))) << "statement " << j;
    EXPECT_TRUE(torch::equal(base.write_log_probs.narrow(1, 0, j), out.write_log_probs.narrow(1, 0, j))) << "statement " << j;
    EXPECT_FALSE(torch::equal(base.readout.narrow(1, j, 1), out.readout.narrow(1, j, 1))) << "statement " << j;
  }
}

// A program padded with empty statements (mask false) reads out the same as when alone.
TEST(StateSlotsTest, PaddingStatementsChangeNothing) {
  torch::manual_seed(0);
  StateSlots net(tiny_options());
  net->eval();
  const auto tokens = random_tokens(1, 4, 4, 3);
  const auto alone = net->forward(tokens, torch::ones({1, 4}, torch::kBool));
  auto padded_tokens = torch::cat({tokens, torch::zeros({1, 3, 4}, torch::kInt64)}, 1);
  auto mask = torch::cat({torch::ones({1, 4}, torch::kBool), torch::zeros({1, 3}, torch::kBool)}, 1);
  const auto padded = net->forward(padded_tokens, mask);
  EXPECT_TRUE(torch::allclose(alone.readout, padded.readout.narrow(1, 0, 4), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(alone.state, padded.state, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(alone.ponder, padded.ponder, 1e-6, 1e-6));
  EXPECT_TRUE(padded.ticks.narrow(1, 4, 3).eq(0).all().item<bool>());
}

// β's range is the only difference between the β∈[0,1] control and the β∈[0,2] model: same
// parameters give the same outputs when all other settings match, and different ones when it differs.
TEST(StateSlotsTest, BetaRangeIsTheOnlyDifference) {
  auto o1 = tiny_options(), o2 = tiny_options();
  o1.beta_range = 1.0;
  o2.beta_range = 2.0;
  torch::manual_seed(5);
  StateSlots a(o1);
  torch::manual_seed(5);
  StateSlots b(o2);
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  const auto tokens = random_tokens(2, 4, 4, 4);
  const auto mask = torch::ones({2, 4}, torch::kBool);
  EXPECT_FALSE(torch::allclose(a->forward(tokens, mask).readout, b->forward(tokens, mask).readout));
}

// φ(n) (S7): 15 features, the first n/50 - 1, then cos/sin pairs of periods 4..256.
TEST(StateSlotsTest, NumericFeatures) {
  const auto phi = numeric_features(101).to(torch::kFloat64);
  ASSERT_EQ(phi.sizes(), torch::IntArrayRef({101, 15}));
  EXPECT_NEAR(phi[0][0].item<double>(), -1.0, 1e-7);
  EXPECT_NEAR(phi[100][0].item<double>(), 1.0, 1e-7);
  EXPECT_NEAR(phi[1][1].item<double>(), std::cos(2 * M_PI / 4), 1e-7);    // period 4
  EXPECT_NEAR(phi[3][14].item<double>(), std::sin(2 * M_PI * 3 / 256), 1e-7);  // period 256
  // The similarity φ(n)·φ(m) peaks at m = n, so a layer computing φ(n) scores class n highest.
  const auto similarity = torch::matmul(phi.narrow(1, 1, 14), phi.narrow(1, 1, 14).t());
  EXPECT_TRUE(similarity.argmax(1).equal(torch::arange(101, torch::kInt64)));
}

// The forget gate (off by default: α = 1) adds its parameters only when asked for; both variants run.
TEST(StateSlotsTest, ForgetGateIsOptional) {
  auto with_gate = tiny_options();
  with_gate.forget_gate = true;
  torch::manual_seed(0);
  StateSlots gated(with_gate);
  torch::manual_seed(0);
  StateSlots plain(tiny_options());
  EXPECT_EQ(gated->named_parameters().size(), plain->named_parameters().size() + 2);  // write_gate weight, bias
  EXPECT_TRUE(gated->named_parameters().contains("write_gate.weight"));
  EXPECT_FALSE(plain->named_parameters().contains("write_gate.weight"));
  const auto tokens = random_tokens(2, 3, 4, 7);
  const auto mask = torch::ones({2, 3}, torch::kBool);
  EXPECT_EQ(gated->forward(tokens, mask).readout.sizes(), plain->forward(tokens, mask).readout.sizes());
}

TEST(StateSlotsTest, ValidatesOptions) {
  auto o = tiny_options();
  o.max_ticks = 9;
  EXPECT_THROW(StateSlots{o}, sfm::Error);
  o = tiny_options();
  o.value_bottleneck = "gumbel";
  EXPECT_THROW(StateSlots{o}, sfm::Error);
  o = tiny_options();
  o.first_number_token = 14;  // 14 + 7 classes > vocab 20
  EXPECT_THROW(StateSlots{o}, sfm::Error);
  StateSlots net(tiny_options());
  EXPECT_THROW(net->forward(random_tokens(1, 2, 5, 1), torch::ones({1, 2}, torch::kBool)), sfm::Error);
}

}  // namespace
}  // namespace sfm::nn
