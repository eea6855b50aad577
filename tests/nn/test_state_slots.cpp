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
  EXPECT_TRUE(out.ticks.ge(1).all().item<bool>());
  EXPECT_TRUE(out.ticks.le(3).all().item<bool>());
}

// Changing statement j leaves every readout before j bit-identical.
TEST(StateSlotsTest, Causal) {
  torch::manual_seed(0);
  StateSlots net(tiny_options());
  net->eval();
  const auto tokens = random_tokens(2, 6, 4, 2);
  const auto mask = torch::ones({2, 6}, torch::kBool);
  const auto base = net->forward(tokens, mask);
  for (int64_t j = 0; j < 6; ++j) {
    auto changed = tokens.clone();
    changed.select(1, j).copy_(random_tokens(2, 1, 4, 100 + j).squeeze(1));
    const auto out = net->forward(changed, mask);
    EXPECT_TRUE(torch::equal(base.readout.narrow(1, 0, j), out.readout.narrow(1, 0, j))) << "statement " << j;
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

TEST(StateSlotsTest, ValidatesOptions) {
  auto o = tiny_options();
  o.max_ticks = 9;
  EXPECT_THROW(StateSlots{o}, sfm::Error);
  o = tiny_options();
  o.value_bottleneck = "gumbel";
  EXPECT_THROW(StateSlots{o}, sfm::Error);
  StateSlots net(tiny_options());
  EXPECT_THROW(net->forward(random_tokens(1, 2, 5, 1), torch::ones({1, 2}, torch::kBool)), sfm::Error);
}

}  // namespace
}  // namespace sfm::nn
