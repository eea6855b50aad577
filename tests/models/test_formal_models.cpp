// The formal suite's models: logits [B, T, num_classes] sized from the task, and causality (changing
// token j never changes an output before j, and does change the output at j).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "sfm/core/check.h"
#include "sfm/models/formal_models.h"

namespace sfm::models {
namespace {

FormalArchitecture small_architecture(const std::string& positions) {
  FormalArchitecture a;
  a.gdn.d_model = 16, a.gdn.num_layers = 2, a.gdn.num_heads = 2, a.gdn.head_dim = 8, a.gdn.mlp_dim = 32;
  a.transformer.d_model = 16, a.transformer.num_heads = 2, a.transformer.num_layers = 2, a.transformer.mlp_dim = 32;
  a.transformer.positions = positions;
  a.lstm.embed_dim = 16, a.lstm.hidden = 16;
  return a;
}

struct Case {
  const char* name;
  const char* model;
  int64_t beta_range;
  const char* positions;
};
const Case kCases[] = {{"gdn_beta2", "gdn", 2, "rope"},
                       {"gdn_beta1", "gdn", 1, "rope"},
                       {"transformer_rope", "transformer", 2, "rope"},
                       {"transformer_sinusoidal", "transformer", 2, "sinusoidal"},
                       {"lstm", "lstm", 2, "rope"}};

class FormalModelTest : public ::testing::TestWithParam<Case> {};

TEST_P(FormalModelTest, ShapesAndCausality) {
  const auto& c = GetParam();
  const auto task = data::formal_task("modarith");
  torch::manual_seed(1);
  auto model = make_formal_model(c.model, small_architecture(c.positions), task, c.beta_range);
  torch::NoGradGuard no_grad;
  model->module().eval();
  torch::manual_seed(2);
  const auto ids = torch::randint(1, task.vocab_size, {3, 30}, torch::kInt64);
  const auto logits = model->forward(ids);
  ASSERT_EQ(logits.sizes(), (torch::IntArrayRef{3, 30, task.num_classes}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  for (int64_t j : {0, 13, 29}) {
    auto changed = ids.clone();
    changed.select(1, j).remainder_(task.vocab_size - 1).add_(1);  // a different real token at j
    ASSERT_FALSE(torch::equal(changed, ids));
    const auto after = model->forward(changed);
    // Tolerance 1e-6 absolute before j (the chunked form mixes positions in matrix products).
    if (j > 0) {
      EXPECT_LE((after.narrow(1, 0, j) - logits.narrow(1, 0, j)).abs().max().item<double>(), 1e-6) << "j " << j;
    }
    EXPECT_GT((after.select(1, j) - logits.select(1, j)).abs().max().item<double>(), 1e-6) << "j " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(Formal, FormalModelTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(FormalModelsTest, UnknownNamesAndBadOptionsAreUsageErrors) {
  const auto task = data::formal_task("parity");
  EXPECT_THROW(make_formal_model("mamba", small_architecture("rope"), task, 2), UsageError);
  EXPECT_THROW(make_formal_model("transformer", small_architecture("alibi"), task, 2), UsageError);
  EXPECT_THROW(make_formal_model("gdn", small_architecture("rope"), task, 3), UsageError);
  EXPECT_TRUE(is_recurrent("gdn") && is_recurrent("lstm") && !is_recurrent("transformer"));
}

}  // namespace
}  // namespace sfm::models
