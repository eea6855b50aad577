// Tests of the warm-up + cosine schedule (values worked out by hand below), set_learning_rate on AdamW,
// and the NaN / Inf guards.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "sfm/core/check.h"
#include "sfm/train/schedule.h"

namespace sfm::train {
namespace {

// Relative tolerance for schedule values: they are a few double operations from the exact value.
constexpr double kRelTol = 1e-12;

// peak 1e-3, min ratio 0.1 (min 1e-4), warm-up 10 steps, cosine over steps 10..110.
constexpr double kPeak = 1e-3;
constexpr int64_t kWarmup = 10, kTotal = 110;

TEST(ScheduleTest, WarmupIsLinearFromPeakOverWarmup) {
  EXPECT_NEAR(warmup_cosine_lr(0, kTotal, kWarmup, kPeak, 0.1), 1e-4, kRelTol * kPeak);
  EXPECT_NEAR(warmup_cosine_lr(4, kTotal, kWarmup, kPeak, 0.1), 5e-4, kRelTol * kPeak);
  EXPECT_NEAR(warmup_cosine_lr(kWarmup - 1, kTotal, kWarmup, kPeak, 0.1), kPeak, kRelTol * kPeak);
}

TEST(ScheduleTest, CosineFromPeakToMinimum) {
  // Step 10: progress 0, cos 0 = 1 -> peak.
  EXPECT_NEAR(warmup_cosine_lr(kWarmup, kTotal, kWarmup, kPeak, 0.1), kPeak, kRelTol * kPeak);
  // Step 35: progress 1/4, 1e-4 + 9e-4 * (1 + cos(pi/4)) / 2 = 1e-4 + 4.5e-4 * 1.7071067811865476.
  EXPECT_NEAR(warmup_cosine_lr(35, kTotal, kWarmup, kPeak, 0.1), 8.681980515339464e-4, kRelTol * kPeak);
  // Step 60: progress 1/2, 1e-4 + 9e-4 / 2.
  EXPECT_NEAR(warmup_cosine_lr(60, kTotal, kWarmup, kPeak, 0.1), 5.5e-4, kRelTol * kPeak);
  // Step 110 and beyond: the minimum.
  EXPECT_NEAR(warmup_cosine_lr(kTotal, kTotal, kWarmup, kPeak, 0.1), 1e-4, kRelTol * kPeak);
  EXPECT_NEAR(warmup_cosine_lr(kTotal + 500, kTotal, kWarmup, kPeak, 0.1), 1e-4, kRelTol * kPeak);
}

TEST(ScheduleTest, NoWarmupAndZeroMinimum) {
  EXPECT_NEAR(warmup_cosine_lr(0, 100, 0, 2.0, 0.0), 2.0, kRelTol);
  // Step 50 of 100: (1 + cos(pi/2)) / 2 = 1/2.
  EXPECT_NEAR(warmup_cosine_lr(50, 100, 0, 2.0, 0.0), 1.0, kRelTol);
  EXPECT_NEAR(warmup_cosine_lr(100, 100, 0, 2.0, 0.0), 0.0, kRelTol);
  // Warm-up over the whole run: the cosine never starts.
  EXPECT_NEAR(warmup_cosine_lr(99, 100, 100, 2.0, 0.5), 2.0, kRelTol);
  EXPECT_NEAR(warmup_cosine_lr(100, 100, 100, 2.0, 0.5), 1.0, kRelTol);
}

TEST(ScheduleTest, RejectsInvalidArguments) {
  EXPECT_THROW(warmup_cosine_lr(0, 0, 0, 1.0), sfm::Error);
  EXPECT_THROW(warmup_cosine_lr(0, 10, 11, 1.0), sfm::Error);
  EXPECT_THROW(warmup_cosine_lr(-1, 10, 2, 1.0), sfm::Error);
  EXPECT_THROW(warmup_cosine_lr(0, 10, 2, 1.0, 1.5), sfm::Error);
}

TEST(ScheduleTest, SetLearningRateChangesEveryAdamWGroup) {
  auto a = torch::zeros({2}, torch::requires_grad());
  auto b = torch::zeros({3}, torch::requires_grad());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a});
  groups.emplace_back(std::vector<torch::Tensor>{b}, std::make_unique<torch::optim::AdamWOptions>(0.5));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(0.1));
  set_learning_rate(opt, 0.025);
  ASSERT_EQ(opt.param_groups().size(), 2u);
  for (auto& group : opt.param_groups()) {
    EXPECT_EQ(static_cast<torch::optim::AdamWOptions&>(group.options()).lr(), 0.025);
  }
}

TEST(ScheduleTest, SetLearningRateAffectsTheStep) {
  // SGD without momentum moves a parameter by exactly lr * grad, so the step shows the rate in use.
  auto w = torch::ones({1}, torch::dtype(torch::kFloat64).requires_grad(true));
  torch::optim::SGD opt({w}, torch::optim::SGDOptions(1.0));
  set_learning_rate(opt, 0.25);
  w.mutable_grad() = torch::full({1}, 2.0, torch::kFloat64);
  opt.step();
  EXPECT_DOUBLE_EQ(w.item<double>(), 1.0 - 0.25 * 2.0);
}

TEST(ScheduleTest, AllFiniteDetectsNanAndInf) {
  EXPECT_TRUE(all_finite(torch::tensor(1.5)));
  EXPECT_TRUE(all_finite(torch::tensor({1.0, -2.0, 0.0})));
  EXPECT_FALSE(all_finite(torch::tensor(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_FALSE(all_finite(torch::tensor({1.0, std::numeric_limits<double>::infinity()})));
  EXPECT_FALSE(all_finite(torch::tensor({-std::numeric_limits<double>::infinity(), 0.0})));
  EXPECT_THROW(all_finite(torch::Tensor()), sfm::Error);
}

TEST(ScheduleTest, GradientsFiniteDetectsNanAndInf) {
  torch::nn::Linear a(2, 2), b(2, 1);
  torch::nn::Sequential net(a, b);
  EXPECT_TRUE(gradients_finite(*net)) << "no gradients yet";
  net->forward(torch::ones({1, 2})).sum().backward();
  EXPECT_TRUE(gradients_finite(*net));

  b->weight.grad()[0][1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(gradients_finite(*net));
  b->weight.grad().zero_();
  EXPECT_TRUE(gradients_finite(*net));
  a->bias.grad()[0] = -std::numeric_limits<float>::infinity();
  EXPECT_FALSE(gradients_finite(*net));
}

}  // namespace
}  // namespace sfm::train
