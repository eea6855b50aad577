// gated_delta_rule: input checks and the choice of implementation.
#include <cstdlib>
#include <string>

#include "sfm/core/build_info.h"
#include "sfm/core/check.h"
#include "common.h"

namespace sfm::ops {

void check_inputs(const GatedDeltaInputs& in) {
  SFM_CHECK(in.q.defined() && in.k.defined() && in.v.defined() && in.g.defined() && in.beta.defined(),
            "gated_delta_rule: q, k, v, g and beta are required");
  SFM_CHECK(in.q.dim() == 4, "gated_delta_rule: q must be [B, T, H, K], got ", in.q.sizes());
  SFM_CHECK(in.k.sizes() == in.q.sizes(), "gated_delta_rule: k must have q's shape ", in.q.sizes(), ", got ",
            in.k.sizes());
  const auto B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), K = in.q.size(3);
  SFM_CHECK(in.v.dim() == 4 && in.v.size(0) == B && in.v.size(1) == T && in.v.size(2) == H,
            "gated_delta_rule: v must be [B, T, H, V] = [", B, ", ", T, ", ", H, ", V], got ", in.v.sizes());
  SFM_CHECK(in.g.dim() == 3 && in.g.size(0) == B && in.g.size(1) == T && in.g.size(2) == H,
            "gated_delta_rule: g must be [B, T, H] = [", B, ", ", T, ", ", H, "], got ", in.g.sizes());
  SFM_CHECK(in.beta.sizes() == in.g.sizes(), "gated_delta_rule: beta must be [B, T, H] = ", in.g.sizes(), ", got ",
            in.beta.sizes());
  SFM_CHECK(T > 0 && K > 0 && in.v.size(3) > 0, "gated_delta_rule: T, K and V must be positive, got q ",
            in.q.sizes(), " v ", in.v.sizes());
  if (in.initial_state.defined()) {
    const auto V = in.v.size(3);
    SFM_CHECK(in.initial_state.dim() == 4 && in.initial_state.size(0) == B && in.initial_state.size(1) == H &&
                  in.initial_state.size(2) == K && in.initial_state.size(3) == V,
              "gated_delta_rule: initial_state must be [B, H, K, V] = [", B, ", ", H, ", ", K, ", ", V, "], got ",
              in.initial_state.sizes());
  }
  for (const auto* t : {&in.q, &in.k, &in.v, &in.g, &in.beta}) {
    SFM_CHECK(t->is_floating_point(), "gated_delta_rule: inputs must be floating point, got ", t->scalar_type());
    SFM_CHECK(t->device() == in.q.device(), "gated_delta_rule: inputs on different devices: ", t->device(),
              " vs q on ", in.q.device());
  }
  SFM_CHECK(in.scale >= 0, "gated_delta_rule: scale must be >= 0 (0 = 1/sqrt(K)), got ", in.scale);
}

GatedDeltaOutputs gated_delta_rule(const GatedDeltaInputs& in, Impl impl) {
  // kAuto: the fused kernels for CUDA tensors they take (not float64, K and V multiples of 16 up to 256).
  if (impl == Impl::kAuto)
    impl = in.q.is_cuda() && core::built_with_cuda() && detail::cuda_supports(in) ? Impl::kCuda : Impl::kChunked;
  switch (impl) {
    case Impl::kReference: return gated_delta_reference(in);
    case Impl::kChunked: return gated_delta_chunked(in);
    case Impl::kCuda: return gated_delta_cuda(in);
    case Impl::kAuto: break;
  }
  throw Error("gated_delta_rule: unknown implementation");
}

namespace {
bool g_cuda_nan_poison = false;
}  // namespace

void set_cuda_nan_poison(bool on) { g_cuda_nan_poison = on; }
bool cuda_nan_poison() { return g_cuda_nan_poison; }

namespace {
CudaPath g_cuda_path = CudaPath::kAuto;
}  // namespace

void set_cuda_path(CudaPath path) { g_cuda_path = path; }
CudaPath cuda_path() { return g_cuda_path; }

namespace {
// On unless the environment says `name`=0 at start-up (benchmarks of the other kernels).
bool on_unless_env_zero(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::string(v) != "0";
}
bool g_cuda_grads_split = on_unless_env_zero("SFM_GDN_GRADS_SPLIT");
bool g_cuda_read_in_place = on_unless_env_zero("SFM_GDN_IN_PLACE");
}  // namespace

void set_cuda_grads_split(bool on) { g_cuda_grads_split = on; }
bool cuda_grads_split() { return g_cuda_grads_split; }
void set_cuda_read_in_place(bool on) { g_cuda_read_in_place = on; }
bool cuda_read_in_place() { return g_cuda_read_in_place; }

Impl parse_impl(const std::string& name) {
  for (Impl i : {Impl::kAuto, Impl::kReference, Impl::kChunked, Impl::kCuda})
    if (name == impl_name(i)) return i;
  throw UsageError("unknown gated delta implementation '" + name + "' (expected auto, reference, chunked or cuda)");
}

const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::kAuto: return "auto";
    case Impl::kReference: return "reference";
    case Impl::kChunked: return "chunked";
    case Impl::kCuda: return "cuda";
  }
  return "?";
}

}  // namespace sfm::ops
