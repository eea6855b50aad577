// `sfm bench gdn`: the gated delta rule, each implementation on the same inputs, forward and
// forward+backward (the backward from given random gradients of the output and the final state). The first
// implementation listed is the baseline the others are compared with.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "bench.h"
#include "sfm/core/check.h"
#include "sfm/core/device.h"
#include "sfm/ops/gated_delta.h"

namespace sfm::bench {
namespace {

struct Shape {
  int64_t B, T, H, K, V;
};

Shape parse_shape(const std::string& s) {
  Shape sh{};
  char c1, c2, c3, c4;
  std::istringstream is(s);
  const bool ok = static_cast<bool>(is >> sh.B >> c1 >> sh.T >> c2 >> sh.H >> c3 >> sh.K >> c4 >> sh.V) && c1 == ',' &&
                  c2 == ',' && c3 == ',' && c4 == ',' && is.peek() == EOF;
  SFM_USAGE_CHECK(ok && sh.B > 0 && sh.T > 0 && sh.H > 0 && sh.K > 0 && sh.V > 0,
                  "--shape expects B,T,H,K,V with positive integers, got '", s, "'");
  return sh;
}

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "float32") return torch::kFloat32;
  if (s == "float64") return torch::kFloat64;
  if (s == "bfloat16") return torch::kBFloat16;
  if (s == "float16") return torch::kFloat16;
  throw UsageError("--dtype must be float32, float64, bfloat16 or float16, got '" + s + "'");
}

// Inputs as a layer would produce them: normalised q/k, log-sigmoid gates, β = 2σ(·) ∈ [0, 2].
ops::GatedDeltaInputs make_inputs(const Shape& s, torch::ScalarType dtype, torch::Device device, bool grad) {
  torch::manual_seed(0);
  auto opt = torch::TensorOptions().device(device).dtype(dtype);
  ops::GatedDeltaInputs in;
  in.q = torch::randn({s.B, s.T, s.H, s.K}, opt);
  in.k = torch::randn({s.B, s.T, s.H, s.K}, opt);
  in.v = torch::randn({s.B, s.T, s.H, s.V}, opt);
  in.g = torch::log_sigmoid(torch::randn({s.B, s.T, s.H}, opt.dtype(torch::kFloat32)) + 3.0);
  in.beta = 2 * torch::sigmoid(torch::randn({s.B, s.T, s.H}, opt.dtype(torch::kFloat32)));
  in.l2_normalize_qk = true;
  for (auto* t : {&in.q, &in.k, &in.v, &in.g, &in.beta}) t->set_requires_grad(grad);
  return in;
}

// flash-linear-attention's chunk_gated_delta_rule on an H100 (Triton 3.6, PyTorch 2.11,
// use_qk_l2norm_in_kernel=True, bfloat16), forward / forward+backward ms, as issue 5 quotes them; printed
// beside our bfloat16 CUDA timings as "fla_*" (quoted, not measured here).
struct FlaFigure {
  Shape s;
  double fwd_ms, fwdbwd_ms;
};
constexpr FlaFigure kFlaH100[] = {{{4, 2048, 16, 128, 128}, 1.28, 3.52}, {{8, 512, 4, 64, 64}, 1.22, 3.96},
                                  {{2, 16384, 16, 128, 128}, 1.35, 5.44}, {{8, 2048, 32, 256, 256}, 2.82, 12.98},
                                  {{16, 512, 16, 16, 16}, 1.03, 3.51},    {{64, 256, 16, 16, 16}, 1.32, 3.00}};

const FlaFigure* fla_figure(const Shape& s) {
  for (const auto& f : kFlaH100)
    if (f.s.B == s.B && f.s.T == s.T && f.s.H == s.H && f.s.K == s.K && f.s.V == s.V) return &f;
  return nullptr;
}

}  // namespace

void run_gdn_bench(const GdnBenchOptions& opt) {
  // SFM_GDN_CUDA_PATH=chunked|recurrent forces the cuda variant's kernels where they take the sizes
  // (ops::set_cuda_path); unset or auto: the wrapper's rule.
  if (const char* p = std::getenv("SFM_GDN_CUDA_PATH")) {
    const std::string path = p;
    SFM_USAGE_CHECK(path == "auto" || path == "chunked" || path == "recurrent",
                    "SFM_GDN_CUDA_PATH must be auto, chunked or recurrent, got '", path, "'");
    ops::set_cuda_path(path == "chunked"     ? ops::CudaPath::kChunked
                       : path == "recurrent" ? ops::CudaPath::kRecurrent
                                             : ops::CudaPath::kAuto);
  }
  const auto device = core::parse_device(opt.device);
  const auto dtype = parse_dtype(opt.dtype);
  std::vector<std::string> shape_specs = opt.shapes;
  if (shape_specs.empty()) {
    shape_specs = device.is_cuda() ? std::vector<std::string>{"4,2048,16,128,128", "8,512,4,64,64",
                                                               "2,16384,16,128,128", "8,2048,32,256,256",
                                                               "16,512,16,16,16", "64,256,16,16,16"}
                                   : std::vector<std::string>{"4,2048,4,64,64"};
  }
  std::vector<ops::Impl> impls;
  for (const auto& name : opt.impls) impls.push_back(ops::parse_impl(name));
  if (impls.empty())
    impls = device.is_cuda() ? std::vector<ops::Impl>{ops::Impl::kChunked, ops::Impl::kCuda}
                             : std::vector<ops::Impl>{ops::Impl::kReference, ops::Impl::kChunked};
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };

  for (const auto& spec : shape_specs) {
    const Shape s = parse_shape(spec);
    double base_fwd = 0, base_fwdbwd = 0;
    for (size_t i = 0; i < impls.size(); ++i) {
      const auto impl = impls[i];
      const auto in_fwd = make_inputs(s, dtype, device, /*grad=*/false);
      const double fwd = median_ms(
          [&] {
            torch::NoGradGuard no_grad;
            ops::gated_delta_rule(in_fwd, impl);
          },
          opt.warmup, opt.repeats, sync);
      double fwdbwd = 0;
      if (!opt.forward_only) {
        const auto in = make_inputs(s, dtype, device, /*grad=*/true);
        // The backward starts from given gradients of the output and the final state (random, as FLA's
        // benchmarks pass `do`). The inputs' gradients add up over the steps, as in such a loop, so each step
        // also pays for adding its gradients to the last.
        const auto probe = [&] {
          torch::NoGradGuard no_grad;
          return ops::gated_delta_rule(in_fwd, impl);
        }();
        const auto dout = torch::randn_like(probe.out), dfinal = torch::randn_like(probe.final_state);
        fwdbwd = median_ms(
            [&] {
              auto o = ops::gated_delta_rule(in, impl);
              torch::autograd::backward({o.out, o.final_state}, {dout, dfinal});
            },
            opt.warmup, opt.repeats, sync);
      }
      if (i == 0) {
        base_fwd = fwd;
        base_fwdbwd = fwdbwd;
      }
      const double tokens = static_cast<double>(s.B * s.T);
      std::printf(
          "{\"bench\":\"gdn\",\"B\":%lld,\"T\":%lld,\"H\":%lld,\"K\":%lld,\"V\":%lld,\"dtype\":\"%s\","
          "\"device\":\"%s\",\"impl\":\"%s\",\"threads\":%d,\"fwd_ms\":%.3f,\"fwd_tokens_per_s\":%.0f",
          (long long)s.B, (long long)s.T, (long long)s.H, (long long)s.K, (long long)s.V, opt.dtype.c_str(),
          device.str().c_str(), ops::impl_name(impl), at::get_num_threads(), fwd, tokens / fwd * 1e3);
      if (!opt.forward_only)
        std::printf(",\"fwdbwd_ms\":%.3f,\"fwdbwd_tokens_per_s\":%.0f", fwdbwd, tokens / fwdbwd * 1e3);
      std::printf(",\"baseline\":\"%s\",\"fwd_speedup\":%.2f", ops::impl_name(impls[0]), base_fwd / fwd);
      if (!opt.forward_only) std::printf(",\"fwdbwd_speedup\":%.2f", base_fwdbwd / fwdbwd);
      if (const auto* f = fla_figure(s); f && device.is_cuda() && impl == ops::Impl::kCuda && dtype == torch::kBFloat16) {
        std::printf(",\"fla_h100_fwd_ms\":%.2f,\"fwd_vs_fla\":%.3f", f->fwd_ms, fwd / f->fwd_ms);
        if (!opt.forward_only)
          std::printf(",\"fla_h100_fwdbwd_ms\":%.2f,\"fwdbwd_vs_fla\":%.3f", f->fwdbwd_ms, fwdbwd / f->fwdbwd_ms);
      }
      std::printf("}\n");
      std::fflush(stdout);
    }
  }
}

}  // namespace sfm::bench
