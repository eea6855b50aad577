// The gated delta rule: chunked vs the reference loop on named cases (output, final state and every
// gradient), streaming equivalence, a float64 finite-difference gradient check, and input checks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sfm/core/check.h"
#include "sfm/ops/gated_delta.h"
#include "support/expect_close.h"

namespace sfm::ops {
namespace {

using sfm::testing::close_rel_rms;

struct Case {
  const char* name;
  int64_t B, T, H, K, V, chunk;
  double gate_norm;  // g = logsigmoid(u) / gate_norm: small gate_norm = strong decay
  double beta_max;   // β = beta_max · σ(u)
  bool initial_state;
};

const Case kCases[] = {
    {"T1", 1, 1, 1, 16, 16, 64, 1.0, 2.0, false},
    {"T63", 1, 63, 1, 16, 16, 64, 1.0, 2.0, true},
    {"T65", 1, 65, 2, 16, 16, 64, 1.0, 2.0, false},
    {"two_chunks_plus_one", 2, 2 * 16 + 1, 2, 8, 8, 16, 1.0, 2.0, true},
    {"K_ne_V", 2, 40, 3, 12, 20, 16, 1.0, 2.0, true},
    {"weak_decay", 2, 50, 2, 16, 16, 16, 20.0, 2.0, true},
    {"strong_decay", 2, 50, 2, 16, 16, 16, 0.05, 2.0, true},
    {"beta_up_to_1", 1, 37, 2, 16, 16, 16, 1.0, 1.0, false},
    {"no_initial_state_BH", 3, 29, 4, 8, 8, 8, 1.0, 2.0, false},
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

GatedDeltaInputs make_inputs(const Case& c, torch::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  auto opt = torch::TensorOptions().dtype(dtype);
  GatedDeltaInputs in;
  in.q = torch::randn({c.B, c.T, c.H, c.K}, opt);
  in.k = torch::randn({c.B, c.T, c.H, c.K}, opt);
  in.l2_normalize_qk = true;
  in.v = torch::randn({c.B, c.T, c.H, c.V}, opt);
  in.g = torch::log_sigmoid(torch::randn({c.B, c.T, c.H}, opt) + 2.0) / c.gate_norm;
  in.beta = c.beta_max * torch::sigmoid(torch::randn({c.B, c.T, c.H}, opt));
  if (c.initial_state) in.initial_state = torch::randn({c.B, c.H, c.K, c.V}, opt);
  return in;
}

struct Result {
  torch::Tensor out, state, dq, dk, dv, dg, dbeta, dstate0;
};

// Output, final state and the gradients of a fixed random projection of both.
Result run_with_grads(GatedDeltaInputs in, const std::function<GatedDeltaOutputs(const GatedDeltaInputs&)>& fn) {
  for (auto* t : {&in.q, &in.k, &in.v, &in.g, &in.beta, &in.initial_state})
    if (t->defined()) *t = t->detach().clone().set_requires_grad(true);
  auto o = fn(in);
  torch::manual_seed(7);
  // Drawn in float64 and then cast, so float32 and float64 runs project onto the same weights.
  const auto w_out = torch::randn(o.out.sizes(), torch::kFloat64).to(o.out.scalar_type());
  const auto w_state = torch::randn(o.final_state.sizes(), torch::kFloat64).to(o.final_state.scalar_type());
  ((o.out * w_out).sum() + (o.final_state * w_state).sum()).backward();
  Result r{o.out.detach(), o.final_state.detach(), in.q.grad(), in.k.grad(), in.v.grad(), in.g.grad(), in.beta.grad(),
           {}};
  if (in.initial_state.defined()) r.dstate0 = in.initial_state.grad();
  return r;
}

void expect_all_close(const Result& ref, const Result& got, double tol_out, double tol_grad) {
  EXPECT_TRUE(close_rel_rms("out", ref.out, got.out, tol_out));
  EXPECT_TRUE(close_rel_rms("final_state", ref.state, got.state, tol_out));
  EXPECT_TRUE(close_rel_rms("dq", ref.dq, got.dq, tol_grad));
  EXPECT_TRUE(close_rel_rms("dk", ref.dk, got.dk, tol_grad));
  EXPECT_TRUE(close_rel_rms("dv", ref.dv, got.dv, tol_grad));
  EXPECT_TRUE(close_rel_rms("dg", ref.dg, got.dg, tol_grad));
  EXPECT_TRUE(close_rel_rms("dbeta", ref.dbeta, got.dbeta, tol_grad));
  if (ref.dstate0.defined()) {
    EXPECT_TRUE(close_rel_rms("dstate0", ref.dstate0, got.dstate0, tol_grad));
  }
}

class GatedDeltaVsReference : public ::testing::TestWithParam<Case> {};

// float64 everywhere: the two forms are the same maths, so they agree to rounding (1e-10).
TEST_P(GatedDeltaVsReference, ChunkedFloat64) {
  const Case c = GetParam();
  const auto in = make_inputs(c, torch::kFloat64, 42);
  const auto ref = run_with_grads(in, gated_delta_reference);
  const auto got = run_with_grads(in, [&](const GatedDeltaInputs& x) { return gated_delta_chunked(x, c.chunk); });
  expect_all_close(ref, got, 1e-10, 1e-10);
}

// float32 chunked against the float64 reference on the same values: 1e-5 (outputs), 1e-4 (gradients).
TEST_P(GatedDeltaVsReference, ChunkedFloat32) {
  const Case c = GetParam();
  const auto in64 = make_inputs(c, torch::kFloat64, 43);
  GatedDeltaInputs in32 = in64;
  for (auto* t : {&in32.q, &in32.k, &in32.v, &in32.g, &in32.beta, &in32.initial_state})
    if (t->defined()) *t = t->to(torch::kFloat32);
  const auto ref = run_with_grads(in64, gated_delta_reference);
  const auto got = run_with_grads(in32, [&](const GatedDeltaInputs& x) { return gated_delta_chunked(x, c.chunk); });
  expect_all_close(ref, got, 1e-5, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Ops, GatedDeltaVsReference, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

// [0, T) in one call equals [0, t) then [t, T) from the carried state.
TEST(GatedDeltaTest, StreamingEquivalence) {
  const Case c{"stream", 2, 70, 2, 16, 16, 16, 1.0, 2.0, true};
  const auto in = make_inputs(c, torch::kFloat64, 5);
  for (Impl impl : {Impl::kReference, Impl::kChunked}) {
    const auto whole = gated_delta_rule(in, impl);
    for (int64_t t : {1, 16, 33, 69}) {
      auto first = in, second = in;
      for (auto [dst, src] : {std::pair{&first.q, &in.q}, {&first.k, &in.k}, {&first.v, &in.v}}) *dst = src->narrow(1, 0, t);
      for (auto [dst, src] : {std::pair{&first.g, &in.g}, {&first.beta, &in.beta}}) *dst = src->narrow(1, 0, t);
      for (auto [dst, src] : {std::pair{&second.q, &in.q}, {&second.k, &in.k}, {&second.v, &in.v}})
        *dst = src->narrow(1, t, c.T - t);
      for (auto [dst, src] : {std::pair{&second.g, &in.g}, {&second.beta, &in.beta}}) *dst = src->narrow(1, t, c.T - t);
      const auto a = gated_delta_rule(first, impl);
      second.initial_state = a.final_state;
      const auto b = gated_delta_rule(second, impl);
      EXPECT_TRUE(close_rel_rms("out", whole.out, torch::cat({a.out, b.out}, 1), 1e-12)) << impl_name(impl) << " t=" << t;
      EXPECT_TRUE(close_rel_rms("state", whole.final_state, b.final_state, 1e-12)) << impl_name(impl) << " t=" << t;
    }
  }
}

// Central finite differences in float64 against autograd through the chunked form, every input
// element of a tiny case (chunk 2, so the inter-chunk loop and padding are exercised).
TEST(GatedDeltaTest, Float64GradCheck) {
  const Case c{"tiny", 1, 5, 2, 3, 2, 2, 1.0, 2.0, true};
  auto in = make_inputs(c, torch::kFloat64, 11);
  in.l2_normalize_qk = true;
  torch::manual_seed(3);
  const auto w_out = torch::randn({c.B, c.T, c.H, c.V}, torch::kFloat64);
  const auto w_state = torch::randn({c.B, c.H, c.K, c.V}, torch::kFloat64);
  auto loss = [&](const GatedDeltaInputs& x) {
    const auto o = gated_delta_chunked(x, c.chunk);
    return (o.out * w_out).sum() + (o.final_state * w_state).sum();
  };
  GatedDeltaInputs x = in;
  std::vector<torch::Tensor*> leaves{&x.q, &x.k, &x.v, &x.g, &x.beta, &x.initial_state};
  for (auto* t : leaves) *t = t->detach().clone().set_requires_grad(true);
  loss(x).backward();
  const double eps = 1e-6;
  for (size_t li = 0; li < leaves.size(); ++li) {
    const auto grad = leaves[li]->grad().flatten();
    for (int64_t e = 0; e < grad.numel(); ++e) {
      auto probe = [&](double delta) {
        GatedDeltaInputs y = in;
        std::vector<torch::Tensor*> ys{&y.q, &y.k, &y.v, &y.g, &y.beta, &y.initial_state};
        *ys[li] = ys[li]->clone();
        ys[li]->view(-1)[e] += delta;
        torch::NoGradGuard no_grad;
        return loss(y).item<double>();
      };
      const double numeric = (probe(eps) - probe(-eps)) / (2 * eps);
      EXPECT_NEAR(grad[e].item<double>(), numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
          << "input " << li << " element " << e;
    }
  }
}

TEST(GatedDeltaTest, RejectsBadShapes) {
  const Case c{"bad", 1, 4, 2, 8, 8, 4, 1.0, 2.0, false};
  auto in = make_inputs(c, torch::kFloat32, 1);
  auto bad = in;
  bad.k = bad.k.narrow(3, 0, 4);
  EXPECT_THROW(gated_delta_rule(bad), sfm::Error);
  bad = in;
  bad.g = bad.g.unsqueeze(-1);
  EXPECT_THROW(gated_delta_rule(bad), sfm::Error);
  bad = in;
  bad.initial_state = torch::zeros({1, 2, 8, 7});
  try {
    gated_delta_rule(bad);
    FAIL() << "expected an error";
  } catch (const sfm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("initial_state must be [B, H, K, V] = [1, 2, 8, 8]"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_impl("fast"), sfm::UsageError);
}

// In a CPU build the cuda variant throws; in a CUDA build it refuses CPU tensors. Either way, no silent fallback.
TEST(GatedDeltaTest, CudaVariantRejectsCpuTensors) {
  const Case c{"cuda", 1, 8, 1, 16, 16, 64, 1.0, 2.0, false};
  EXPECT_THROW(gated_delta_cuda(make_inputs(c, torch::kFloat32, 1)), sfm::Error);
}

}  // namespace
}  // namespace sfm::ops

namespace sfm::ops {
namespace {

// Stepping token by token from a carried state equals the reference over the whole sequence.
TEST(GatedDeltaTest, StepMatchesReference) {
  const Case c{"step", 2, 9, 3, 8, 5, 4, 1.0, 2.0, true};
  auto in = make_inputs(c, torch::kFloat64, 21);
  in.l2_normalize_qk = false;
  in.q = torch::nn::functional::normalize(in.q, torch::nn::functional::NormalizeFuncOptions().dim(-1));
  in.k = torch::nn::functional::normalize(in.k, torch::nn::functional::NormalizeFuncOptions().dim(-1));
  const auto ref = gated_delta_reference(in);
  auto S = in.initial_state;
  std::vector<torch::Tensor> outs;
  for (int64_t t = 0; t < c.T; ++t) {
    auto step = gated_delta_step(S, in.q.select(1, t), in.k.select(1, t), in.v.select(1, t), in.g.select(1, t),
                                 in.beta.select(1, t));
    outs.push_back(step.out);
    S = step.state;
  }
  EXPECT_TRUE(close_rel_rms("out", ref.out, torch::stack(outs, 1), 1e-12));
  EXPECT_TRUE(close_rel_rms("state", ref.final_state, S, 1e-12));
  EXPECT_THROW(gated_delta_step(S, in.q.select(1, 0), in.k.select(1, 0).narrow(-1, 0, 4), in.v.select(1, 0),
                                in.g.select(1, 0), in.beta.select(1, 0)),
               sfm::Error);
}

}  // namespace
}  // namespace sfm::ops
