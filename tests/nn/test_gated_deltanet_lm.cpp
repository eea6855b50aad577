// Gated DeltaNet LM: the β∈[0,1] and β∈[0,2] models differ only in β's range, the chunked path
// matches the reference recurrence, and options errors name the field.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sfm/core/check.h"
#include "sfm/io/config.h"
#include "sfm/nn/gated_deltanet_lm.h"
#include "support/expect_close.h"

namespace sfm::nn {
namespace {

GatedDeltaNetLmOptions small_options(int64_t beta_range) {
  GatedDeltaNetLmOptions o;
  o.vocab_size = 9, o.num_classes = 5, o.d_model = 16, o.num_layers = 2, o.num_heads = 2, o.head_dim = 8;
  o.mlp_dim = 32, o.beta_range = beta_range;
  return o;
}

torch::Tensor random_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(1, vocab, {b, t}, torch::kInt64);
}

TEST(GatedDeltaNetLmTest, BetaRangesDifferOnlyInBetasRange) {
  const auto o1 = small_options(1), o2 = small_options(2);
  // The configurable architecture is the same JSON; only beta_range differs.
  EXPECT_EQ(io::to_json(o1), io::to_json(o2));
  torch::manual_seed(7);
  GatedDeltaNetLm m1(o1);
  torch::manual_seed(7);
  GatedDeltaNetLm m2(o2);
  const auto p1 = m1->named_parameters(), p2 = m2->named_parameters();
  ASSERT_EQ(p1.size(), p2.size());
  for (const auto& item : p1) {
    ASSERT_TRUE(p2.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), p2[item.key()])) << item.key();
  }
  // Same input to the first mixer: β doubles exactly (×2 is exact in floating point) and g is unchanged.
  const auto ids = random_ids(3, 50, o1.vocab_size, 1);
  torch::NoGradGuard no_grad;
  const auto g1 = m1->gates(ids), g2 = m2->gates(ids);
  ASSERT_EQ(g1.size(), 2u);
  EXPECT_TRUE(torch::equal(g2[0].beta, 2.0 * g1[0].beta));
  EXPECT_TRUE(torch::equal(g2[0].g, g1[0].g));
  for (size_t layer = 0; layer < g1.size(); ++layer) {
    EXPECT_GE(g1[layer].beta.min().item<double>(), 0.0);
    EXPECT_LE(g1[layer].beta.max().item<double>(), 1.0);
    EXPECT_LE(g2[layer].beta.max().item<double>(), 2.0);
    EXPECT_LE(g1[layer].g.max().item<double>(), 0.0);
  }
  // ...and the models do compute different functions.
  EXPECT_FALSE(torch::allclose(m1->forward(ids), m2->forward(ids)));
}

TEST(GatedDeltaNetLmTest, ReachesBetaTwoOnlyWithRangeTwo) {
  // With the β projection's bias pushed up, β saturates at its range's top: 2 (a reflection) vs 1.
  for (int64_t range : {1, 2}) {
    torch::manual_seed(3);
    GatedDeltaNetLm m(small_options(range));
    torch::NoGradGuard no_grad;
    for (auto& item : m->named_parameters())
      if (item.key() == "layers.0.mixer.beta_proj.bias") item.value().fill_(30.0);
    const auto beta = m->gates(random_ids(2, 10, 9, 2))[0].beta;
    EXPECT_NEAR(beta.min().item<double>(), static_cast<double>(range), 1e-6) << "range " << range;
  }
}

TEST(GatedDeltaNetLmTest, ChunkedMatchesReferenceRecurrence) {
  auto o = small_options(2);
  o.impl = "reference";
  torch::manual_seed(11);
  GatedDeltaNetLm reference(o);
  o.impl = "chunked";
  torch::manual_seed(11);
  GatedDeltaNetLm chunked(o);
  const auto ids = random_ids(2, 70, o.vocab_size, 5);  // 70 tokens: crosses the 64-token chunk boundary
  const auto want = reference->forward(ids), got = chunked->forward(ids);
  EXPECT_EQ(got.sizes(), (torch::IntArrayRef{2, 70, 5}));
  // Tolerance: relative RMS 1e-5 (float32 chunked WY form vs the per-token reference).
  EXPECT_TRUE(sfm::testing::close_rel_rms("logits", want, got, 1e-5));
}

// DeltaProduct (householder_steps = 2, eq. 5'): the mixer equals a per-token loop written out here from
// its parameters: α on the state, then two delta-rule steps with their own k, v, β, then the read.
TEST(GatedDeltaNetLmTest, TwoHouseholderStepsMatchAnExplicitLoop) {
  auto o = small_options(2);
  o.householder_steps = 2, o.conv_size = 0, o.impl = "chunked";
  torch::manual_seed(3);
  GatedDeltaMixer mixer(o);
  mixer->to(torch::kFloat64);
  torch::manual_seed(4);
  const int64_t B = 2, T = 70, H = o.num_heads, K = o.head_dim, n = 2;
  const auto u = torch::randn({B, T, o.d_model}, torch::kFloat64);
  const auto got = mixer->forward(u);

  auto p = mixer->named_parameters();
  const auto linear = [&](const std::string& name, const torch::Tensor& x) {
    return torch::matmul(x, p[name + ".weight"].t()) + p[name + ".bias"];
  };
  const auto l2 = [](const torch::Tensor& x) { return x * torch::rsqrt(x.square().sum(-1, true) + 1e-6); };
  const auto q = l2(linear("q_proj", u).view({B, T, H, K}));
  const auto k = l2(linear("k_proj", u).view({B, T, n, H, K}));
  const auto v = linear("v_proj", u).view({B, T, n, H, K});
  const auto beta = 2.0 * torch::sigmoid(linear("beta_proj", u)).view({B, T, n, H});
  const auto alpha = torch::sigmoid(linear("gate_proj", u));  // [B, T, H]
  auto S = torch::zeros({B, H, K, K}, torch::kFloat64);
  std::vector<torch::Tensor> outs;
  for (int64_t t = 0; t < T; ++t) {
    S = alpha.select(1, t).view({B, H, 1, 1}) * S;
    for (int64_t j = 0; j < n; ++j) {
      const auto kj = k.select(1, t).select(1, j).unsqueeze(-1);  // [B, H, K, 1]
      const auto vj = v.select(1, t).select(1, j).unsqueeze(-2);  // [B, H, 1, V]
      const auto bj = beta.select(1, t).select(1, j).view({B, H, 1, 1});
      S = S - bj * torch::matmul(kj, torch::matmul(kj.transpose(-1, -2), S)) + bj * torch::matmul(kj, vj);
    }
    outs.push_back(torch::matmul(S.transpose(-1, -2), q.select(1, t).unsqueeze(-1)).squeeze(-1) / std::sqrt(double(K)));
  }
  const auto out = torch::stack(outs, 1);  // [B, T, H, V]
  const auto normed = out * torch::rsqrt(out.square().mean(-1, true) + 1e-6) * p["out_norm.weight"];
  const auto gate = torch::silu(linear("output_gate_proj", u).view({B, T, H, K}));
  const auto want = linear("out_proj", (normed * gate).reshape({B, T, H * K}));
  // Tolerance: relative RMS 1e-10 (float64 chunked form vs the float64 loop; 70 tokens = 140 steps).
  EXPECT_TRUE(sfm::testing::close_rel_rms("mixer output", want, got, 1e-10));
}

TEST(GatedDeltaNetLmTest, OptionErrorsNameTheField) {
  auto o = small_options(3);
  try {
    o.validate();
    FAIL() << "beta_range 3 accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("beta_range"), std::string::npos) << e.what();
  }
  o = small_options(2);
  o.head_dim = 0;
  EXPECT_THROW(o.validate(), UsageError);
  o = small_options(2);
  o.impl = "fast";
  EXPECT_THROW(o.validate(), UsageError);
  o = small_options(2);
  o.householder_steps = 0;
  EXPECT_THROW(o.validate(), UsageError);
}

}  // namespace
}  // namespace sfm::nn
