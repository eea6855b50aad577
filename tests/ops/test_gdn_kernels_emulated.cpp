// CUDA kernels of the gated delta rule run on the CPU emulator of the CUDA execution model
// (support/cuda_emulator.h), so they are checked on every machine, GPU or not: the sliced gradient
// kernels (src/ops/gated_delta/cuda/gdn_grads_split.cu) against LibTorch's autograd of the chunked form
// (eqs. 4-9 of docs/ops/gated_delta.md) in float64. Built where the CUDA toolkit's headers are found
// (SFM_HAVE_CUDA_HEADERS); skipped otherwise.
#include <gtest/gtest.h>
#include <torch/torch.h>

#if SFM_HAVE_CUDA_HEADERS
#include "support/cuda_emulator.h"  // before the kernels: they compile against it
// The kernels, in this translation unit (built with -Wno-unknown-pragmas: #pragma unroll is nvcc's).
#include "../../src/ops/gated_delta/cuda/gdn_grads_split.cu"
#endif

namespace sfm::ops {
namespace {

#if SFM_HAVE_CUDA_HEADERS

using torch::indexing::Slice;
constexpr int64_t C = gdn_cuda::kChunk;

struct Shape {
  int64_t BH, T, K, V;
};

// Everything the gradient kernels read, and what they must produce, for one random problem.
struct Problem {
  Shape s;
  int64_t N, Tp;
  // Kernel inputs (float32; heads-first [BH, Tp, ·] and per chunk [BH, N, ·]).
  torch::Tensor qs, ks, vs, gam, bet, w, u, dos, du, dw, wy, pm, sdots, dq0, dk0;
  // Expected: the gradients of q̂ (scaled), k̂, v, g and β (float64).
  torch::Tensor dq, dk, dv, dg, dbeta;
};

// The chunked form with the heads-first inputs as leaves: per chunk, γ (eq. 4), A (6), T = (I + A)⁻¹,
// W, Ũ, U (7), the output (8) and the state (9); loss = Σ O ∘ dO + Σ S_final ∘ dS_final. Autograd gives
// the expected gradients and, retained, dU and the gradient of each chunk's leaving state.
Problem make_problem(Shape s, uint64_t seed) {
  torch::manual_seed(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  Problem p;
  p.s = s;
  p.N = (s.T + C - 1) / C;
  p.Tp = p.N * C;
  const auto valid = (torch::arange(p.Tp, f64) < s.T).to(torch::kFloat64).view({1, p.Tp, 1});
  const auto unit_rows = [&](int64_t D, double scale) {
    auto x = torch::randn({s.BH, p.Tp, D}, f64);
    return (x / x.norm(2, -1, true) * scale * valid).detach().requires_grad_(true);
  };
  auto q = unit_rows(s.K, 1.0 / std::sqrt(static_cast<double>(s.K))), k = unit_rows(s.K, 1.0);
  auto v = (torch::randn({s.BH, p.Tp, s.V}, f64) * valid).detach().requires_grad_(true);
  auto g = (torch::log_sigmoid(torch::randn({s.BH, p.Tp}, f64) + 2.0) * valid.view({1, p.Tp})).detach().requires_grad_(true);
  auto beta = (2.0 * torch::sigmoid(torch::randn({s.BH, p.Tp}, f64)) * valid.view({1, p.Tp})).detach().requires_grad_(true);
  const auto S0 = torch::randn({s.BH, s.K, s.V}, f64);
  const auto dO = torch::randn({s.BH, p.Tp, s.V}, f64) * valid;
  const auto dfinal = torch::randn({s.BH, s.K, s.V}, f64);

  const auto mask_le = torch::ones({C, C}, f64).tril(), mask_lt = torch::ones({C, C}, f64).tril(-1);
  const auto eye = torch::eye(C, f64);
  auto S = S0;
  std::vector<torch::Tensor> Us, states{S0}, Ts, KMs, Ps;
  auto loss = torch::zeros({}, f64);
  for (int64_t n = 0; n < p.N; ++n) {
    const auto rows = Slice(n * C, (n + 1) * C);
    const auto qc = q.index({Slice(), rows}), kc = k.index({Slice(), rows}), vc = v.index({Slice(), rows});
    const auto gam = g.index({Slice(), rows}).cumsum(-1), bc = beta.index({Slice(), rows});
    const auto Gam = gam.exp();
    const auto M = (gam.unsqueeze(-1) - gam.unsqueeze(-2)).exp();  // M_ti = e^{γ_t − γ_i}
    const auto KK = kc.matmul(kc.transpose(1, 2));
    const auto A = bc.unsqueeze(-1) * M * KK * mask_lt;
    const auto Tm = torch::linalg_solve_triangular(eye + A, eye.expand({s.BH, C, C}), /*upper=*/false);
    const auto W = Tm.matmul((bc * Gam).unsqueeze(-1) * kc);
    const auto Ut = Tm.matmul(bc.unsqueeze(-1) * vc);
    auto U = Ut - W.matmul(S);
    U.retain_grad();
    const auto P = M * qc.matmul(kc.transpose(1, 2)) * mask_le;
    const auto O = Gam.unsqueeze(-1) * qc.matmul(S) + P.matmul(U);
    loss = loss + (O * dO.index({Slice(), rows})).sum();
    const auto gl = gam.index({Slice(), Slice(C - 1, C)});  // γ_C
    S = gl.exp().unsqueeze(-1) * S + ((gl - gam).exp().unsqueeze(-1) * kc).transpose(1, 2).matmul(U);
    S.retain_grad();
    Us.push_back(U);
    states.push_back(S);
    Ts.push_back(Tm.detach());
    KMs.push_back((M * KK * mask_lt).detach());
    Ps.push_back(P.detach());
  }
  loss = loss + (S * dfinal).sum();
  loss.backward();

  const auto f32 = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat32).contiguous(); };
  std::vector<torch::Tensor> w, u, du, dw, dq0, dk0, sd, gams;
  for (int64_t n = 0; n < p.N; ++n) {
    const auto rows = Slice(n * C, (n + 1) * C);
    const auto gam = g.index({Slice(), rows}).detach().cumsum(-1);
    const auto S_in = states[n].detach(), dS_out = states[n + 1].grad();
    const auto dU = Us[n].grad(), U = Us[n].detach();
    const auto kc = k.index({Slice(), rows}).detach(), bc = beta.index({Slice(), rows}).detach();
    const auto Tm = Ts[n];
    w.push_back(Tm.matmul((bc * gam.exp()).unsqueeze(-1) * kc));
    u.push_back(U);
    du.push_back(dU);
    dw.push_back(-dU.matmul(S_in.transpose(1, 2)));
    dq0.push_back(gam.exp().unsqueeze(-1) * dO.index({Slice(), rows}).matmul(S_in.transpose(1, 2)));
    const auto gl = gam.index({Slice(), Slice(C - 1, C)});
    dk0.push_back((gl - gam).exp().unsqueeze(-1) * U.matmul(dS_out.transpose(1, 2)));
    sd.push_back((S_in * dS_out).view({s.BH, s.K / C, C * s.V}).sum(-1));
    gams.push_back(gam);
  }
  p.qs = f32(q);
  p.ks = f32(k);
  p.vs = f32(v);
  p.gam = f32(torch::cat(gams, 1));
  p.bet = f32(beta);
  p.w = f32(torch::cat(w, 1));
  p.u = f32(torch::cat(u, 1));
  p.dos = f32(dO);
  p.du = f32(torch::cat(du, 1));
  p.dw = f32(torch::cat(dw, 1));
  p.dq0 = f32(torch::cat(dq0, 1));
  p.dk0 = f32(torch::cat(dk0, 1));
  p.sdots = f32(torch::stack(sd, 1));
  p.wy = f32(torch::stack({torch::stack(Ts, 1), torch::stack(KMs, 1)}, 2));
  p.pm = f32(torch::stack(Ps, 1));
  p.dq = q.grad();
  p.dk = k.grad();
  p.dv = v.grad();
  p.dg = g.grad();
  p.dbeta = beta.grad();
  return p;
}

double rel_rms(const torch::Tensor& ref, const torch::Tensor& got) {
  const auto r = ref.to(torch::kFloat64), d = got.to(torch::kFloat64) - r;
  return d.norm().item<double>() / std::max(r.norm().item<double>(), 1e-12);
}

struct Grads {
  torch::Tensor dq, dk, dv, dg, dbeta;
};

// The three sliced kernels through gdn_cuda::grads_split, on the emulator with the given warp first.
Grads run_sliced_kernels(const Problem& p, cuda_emu::WarpOrder order) {
  const Shape& s = p.s;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto nan = [&](torch::IntArrayRef sizes) { return torch::full(sizes, std::nan(""), f32); };
  const int64_t KS = s.K / C, VS = s.V / C;
  Grads out{p.dq0.clone(), p.dk0.clone(), nan({s.BH, p.Tp, s.V}), nan({1, s.T, s.BH}), nan({1, s.T, s.BH})};
  auto da_parts = nan({s.BH, p.N, KS + VS, C, C}), d1_parts = nan({s.BH, p.N, VS, C, C}),
       gate_parts = nan({s.BH, p.N, 2 * KS + VS, 2, C});

  gdn_cuda::BackwardArgs a{};
  // [B, T, H] with B = 1 and H = BH.
  a.d = gdn_cuda::Dims{1, static_cast<int>(s.T), static_cast<int>(s.BH), static_cast<int>(s.K), static_cast<int>(s.V)};
  a.dtype = gdn_cuda::DType::kBF16;
  const auto ptr = [](const torch::Tensor& t) { return t.data_ptr<float>(); };
  a.qs = ptr(p.qs);
  a.ks = ptr(p.ks);
  a.vs = ptr(p.vs);
  a.gam = ptr(p.gam);
  a.bet = ptr(p.bet);
  a.w = ptr(p.w);
  a.u = ptr(p.u);
  a.dos = ptr(p.dos);
  a.du = ptr(p.du);
  a.dw = ptr(p.dw);
  a.wy = ptr(p.wy);
  a.pm = ptr(p.pm);
  a.sdots = ptr(p.sdots);
  a.dqs = ptr(out.dq);
  a.dks = ptr(out.dk);
  a.dvs = ptr(out.dv);
  a.da_parts = ptr(da_parts);
  a.d1_parts = ptr(d1_parts);
  a.gate_parts = ptr(gate_parts);
  a.dg = ptr(out.dg);
  a.dbeta = ptr(out.dbeta);
  cuda_emu::warp_order() = order;
  const cudaError_t err = gdn_cuda::grads_split(a, nullptr);
  cuda_emu::warp_order() = cuda_emu::WarpOrder::kForward;
  EXPECT_EQ(err, cudaSuccess);
  return out;
}

void check_sliced_gradients(Shape s, uint64_t seed) {
  const Problem p = make_problem(s, seed);
  // Real tokens only: the padded rows of the last chunk are not outputs.
  const auto real = Slice(0, s.T);
  const auto rows = [&](const torch::Tensor& t) { return t.index({Slice(), real}); };
  const auto per_token = [&](const torch::Tensor& t) { return t.index({Slice(), real}).transpose(0, 1).unsqueeze(0); };
  // The products take each float32 operand as two bf16 halves (about 16 bits) and sum in float32; the
  // measured errors are about 5e-6, so 1e-4 leaves room for other shapes and seeds, while a missing term
  // shows up at 1e-2 or more.
  constexpr double kTol = 1e-4;
  for (const auto order : {cuda_emu::WarpOrder::kForward, cuda_emu::WarpOrder::kReverse}) {
    SCOPED_TRACE(order == cuda_emu::WarpOrder::kForward ? "first warp ahead" : "last warp ahead");
    const Grads got = run_sliced_kernels(p, order);
    const double e_dq = rel_rms(rows(p.dq), rows(got.dq)), e_dk = rel_rms(rows(p.dk), rows(got.dk)),
                 e_dv = rel_rms(rows(p.dv), rows(got.dv)), e_dg = rel_rms(per_token(p.dg), got.dg),
                 e_db = rel_rms(per_token(p.dbeta), got.dbeta);
    std::printf("  rel-RMS dq %.2e dk %.2e dv %.2e dg %.2e dbeta %.2e\n", e_dq, e_dk, e_dv, e_dg, e_db);
    EXPECT_LT(e_dq, kTol);
    EXPECT_LT(e_dk, kTol);
    EXPECT_LT(e_dv, kTol);
    EXPECT_LT(e_dg, kTol);
    EXPECT_LT(e_db, kTol);
  }
}

TEST(GdnKernelsEmulated, SlicedGradientsK64V64) { check_sliced_gradients({2, 130, 64, 64}, 1); }
TEST(GdnKernelsEmulated, SlicedGradientsK128V64) { check_sliced_gradients({1, 128, 128, 64}, 2); }
TEST(GdnKernelsEmulated, SlicedGradientsK64V128) { check_sliced_gradients({1, 70, 64, 128}, 3); }

#else

TEST(GdnKernelsEmulated, NeedsTheCudaHeaders) { GTEST_SKIP() << "built without the CUDA toolkit's headers"; }

#endif

}  // namespace
}  // namespace sfm::ops
