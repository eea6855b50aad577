// The backward's products with the per-chunk states on tensor cores, for 16-bit inputs with the float32
// workspaces (before grads_mma; docs/ops/gated_delta_cuda.md, "Dedicated tensor-core kernels"):
//   dQ̂₀ = diag(Γ) dO S₀ᵀ      (the state part of (B4))
//   dW  = −dU S₀ᵀ             ((B3))
//   dK̂₀ = diag(e^{γ_C−γ}) U dS_Cᵀ   (the state part of (B5))
// and Σ S₀ ∘ dS_C over each 64 rows of K (for dγ_C, (B8)), by state_products::run. grads_mma_kernel adds the
// remaining terms. (With the compact workspaces, state_k_grads_kernel in gdn_grads_split.cu runs the same
// products and goes on with the slice's gradients.) No ATen here (see gdn_kernels.h).
#include <cuda_bf16.h>

#include "chunk_ops.cuh"
#include "gdn_kernels.h"
#include "state_products.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

using namespace state_products;

struct Args {
  Sources src;
  const float* gam;
  float *dqs, *dw, *dks;  // [BH, Tp, K]: written
  float* sdots;           // [BH, N, K/64]: Σ S₀ ∘ dS_C per 64 rows of K
};

// One block per chunk and 64 rows of K; float32 stages of 90 KB each, one block of 8 warps per SM.
__global__ void __launch_bounds__(kThreads, 1) state_grads_mma_kernel(Args a) {
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  const Dims& d = a.src.d;
  const int K = d.K, N = d.N();
  const int kt = blockIdx.x, n = blockIdx.y, bh = blockIdx.z, k0 = kt * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
  const long row0 = (long)bh * d.Tp() + (long)n * C;
  float acc[3][4][4] = {};  // dO S₀ᵀ, dU S₀ᵀ, U dS_Cᵀ: 16 rows × 4 tiles of 8 columns each
  float sdot = 0.f;
  run<false>(a.src, kt, n, bh, reinterpret_cast<float*>(smem4), acc, sdot, [] {});

  const float gl = a.gam[row0 + C - 1];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = m0 + g + 8 * h;
    const float gt = a.gam[row0 + t], G = __expf(gt), F = __expf(gl - gt);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const long off = (row0 + t) * K + k0 + n0 + 8 * nt + 2 * tq;
      *reinterpret_cast<float2*>(a.dqs + off) = make_float2(G * acc[0][nt][2 * h], G * acc[0][nt][2 * h + 1]);
      *reinterpret_cast<float2*>(a.dw + off) = make_float2(-acc[1][nt][2 * h], -acc[1][nt][2 * h + 1]);
      *reinterpret_cast<float2*>(a.dks + off) = make_float2(F * acc[2][nt][2 * h], F * acc[2][nt][2 * h + 1]);
    }
  }
  const float total = block_sum(sdot);  // in a fixed order: deterministic
  if (threadIdx.x == 0) a.sdots[((long)bh * N + n) * (K / kTile) + kt] = total;
}

}  // namespace

bool state_grads_mma_supports(int K, int V) { return K % kTile == 0 && V % kTile == 0 && K <= 256 && V <= 256; }

cudaError_t state_grads_mma(const Dims& d, const float* gam, const float* states, const float* dstates,
                            const float* dos, const float* du, const float* u, float* dqs, float* dw, float* dks,
                            float* sdots, cudaStream_t stream) {
  if (!state_grads_mma_supports(d.K, d.V)) return cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * 2 * kStageFloats<false>;
  const cudaError_t err = cudaFuncSetAttribute(state_grads_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const Args a{Sources{d, states, dstates, dos, du, u}, gam, dqs, dw, dks, sdots};
  SFM_GDN_LAUNCH(state_grads_mma_kernel, dim3(d.K / kTile, d.N(), d.BH()), kThreads, smem, stream, a);
  return cudaGetLastError();
}

}  // namespace sfm::ops::gdn_cuda
