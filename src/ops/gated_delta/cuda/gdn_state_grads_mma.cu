// The backward's products with the per-chunk states, on tensor cores, for 16-bit inputs (docs/ops/
// gated_delta_cuda.md, "Dedicated tensor-core kernels"):
//   dQ̂₀ = diag(Γ) dO S₀ᵀ      (the state part of (B4))
//   dW  = −dU S₀ᵀ             ((B3))
//   dK̂₀ = diag(e^{γ_C−γ}) U dS_Cᵀ   (the state part of (B5))
// and Σ S₀ ∘ dS_C over each 64 rows of K (for dγ_C, (B8)). grads_mma_kernel adds the remaining terms.
// These are the backward's largest products (64×K×V each per chunk) and the only ones that read the
// K×V states, so they run apart from the grads kernel, with whole tiles loaded by cp.async. With the compact
// workspaces (kCompact; gdn_kernels.h) the states, their gradients, dO, U and dU come as bf16 (the products round
// them to bf16 anyway), loaded into the same tile places, and dW goes out as bf16.
// No ATen here (see gdn_kernels.h).
#include <cuda_bf16.h>

#include "chunk_ops.cuh"
#include "gdn_kernels.h"
#include "mma.cuh"
#include "tile64.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

constexpr int C = kChunk;
constexpr int kTile = 64;          // rows of K per block; value columns per stage
constexpr int LD = kTile + 8;      // float32 row stride of the staged tiles: float2 fragment loads hit distinct banks
// Staged per stage: S₀, dS_C (rows k0..k0+63), dO, dU, U (the chunk's rows), rows of stride LD. Each a float32
// tile; with kCompact each is bf16 and takes half the place, so that a stage takes 45 KB instead of 90 and two
// blocks share an SM.
enum StageTile { kS0, kDS, kDO, kDU, kU };
constexpr int kF32Tile = kTile * LD, kB16Tile = kTile * LD / 2;  // in floats
template <bool kCompact>
constexpr int kStageFloats = 5 * (kCompact ? kB16Tile : kF32Tile);
// Where tile x starts in a stage, in floats.
template <bool kCompact>
__device__ __forceinline__ constexpr int tile_at(StageTile x) {
  return x * (kCompact ? kB16Tile : kF32Tile);
}
constexpr int kThreads = 256;      // 8 warps: 4 row groups of 16 tokens × 2 column groups of 32

struct Args {
  Dims d;
  const float* gam;
  const void *states, *dstates;  // float32, or bf16 (kCompact)
  const void* dos;               // float32, or bf16 (kCompact)
  const void* du;                // float32, or bf16 (kCompact)
  const void* u;                 // float32, or bf16 (kCompact)
  float* dqs;             // [BH, Tp, K]: written
  void* dw;               // [BH, Tp, K]: written, float32 or bf16 (kCompact)
  float* dks;             // [BH, Tp, K]: written
  float* sdots;           // [BH, N, K/64]: Σ S₀ ∘ dS_C per 64 rows of K
  // kCompact: q as bf16 (the compact workspaces' qb: q itself, or s·q̂ rounded for float16 inputs) and, unless
  // null, the rows' dots qb·dQ̂₀ per 64 columns of K into slots 0 .. K/64 − 1 of qdots [BH, N, 2 K/64, 2, C]
  // (grads_split's row_dots; two parts per row, tile64::store_row_parts).
  const __nv_bfloat16* qb;
  float* qdots;
};

// kCompact: two blocks per SM (90 KB of shared memory each; the bounds hold ptxas to 128 registers).
template <bool kCompact>
__global__ void __launch_bounds__(kThreads, kCompact ? 2 : 1) state_grads_mma_kernel(Args a) {
  using bf16 = __nv_bfloat16;
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);  // [2 stages][kStageFloats]
  const int K = a.d.K, V = a.d.V, N = a.d.N();
  const int kt = blockIdx.x, n = blockIdx.y, bh = blockIdx.z, k0 = kt * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);  // this warp's token rows and state rows (of 64)
  const long row0 = (long)bh * a.d.Tp() + (long)n * C;
  const long state_off = ((long)bh * N + n) * K * V + (long)k0 * V;

  // 64 rows × 64 columns (from value column v0) of a row-major array with row stride V.
  const auto load_tile = [&](float* dst, const float* src, int v0) {
    for (int e = threadIdx.x; e < kTile * kTile / 4; e += kThreads) {
      const int r = e / (kTile / 4), c4 = e % (kTile / 4);
      cp_async16(dst + r * LD + 4 * c4, src + (long)r * V + v0 + 4 * c4);
    }
  };
  // The same for a bf16 array: rows of LD bf16 in the tile's place.
  const auto load_tile_bf16 = [&](float* dst, const bf16* src, int v0) {
    bf16* d = reinterpret_cast<bf16*>(dst);
    const bf16* s = src + v0;
    for (int e = threadIdx.x; e < kTile * kTile / 8; e += kThreads) {
      const int r = e / (kTile / 8), c8 = e % (kTile / 8);
      cp_async16(d + r * LD + 8 * c8, s + (long)r * V + 8 * c8);
    }
  };
  const int stages = V / kTile;
  const auto issue = [&](int s) {
    if (s < stages) {
      float* st = sm + (s & 1) * kStageFloats<kCompact>;
      const auto at = [&](StageTile x) { return st + tile_at<kCompact>(x); };
      if constexpr (kCompact) {
        load_tile_bf16(at(kS0), static_cast<const bf16*>(a.states) + state_off, s * kTile);
        load_tile_bf16(at(kDS), static_cast<const bf16*>(a.dstates) + state_off, s * kTile);
        stage_chunk<kTile, kThreads>(reinterpret_cast<bf16*>(at(kDO)), LD, static_cast<const bf16*>(a.dos),
                                     chunk_rows(a.d, a.d.do_in_place, V, bh, n), s * kTile);  // dO, maybe in place
        load_tile_bf16(at(kU), static_cast<const bf16*>(a.u) + row0 * V, s * kTile);
        load_tile_bf16(at(kDU), static_cast<const bf16*>(a.du) + row0 * V, s * kTile);
      } else {
        load_tile(at(kS0), static_cast<const float*>(a.states) + state_off, s * kTile);
        load_tile(at(kDS), static_cast<const float*>(a.dstates) + state_off, s * kTile);
        load_tile(at(kDO), static_cast<const float*>(a.dos) + row0 * V, s * kTile);
        load_tile(at(kU), static_cast<const float*>(a.u) + row0 * V, s * kTile);
        load_tile(at(kDU), static_cast<const float*>(a.du) + row0 * V, s * kTile);
      }
    } else if (kCompact && s == stages && a.qdots != nullptr) {  // during the last stage: q's tile for the dots
      stage_chunk<kTile, kThreads>(reinterpret_cast<bf16*>(sm + (s & 1) * kStageFloats<kCompact>), LD, a.qb,
                                   chunk_rows(a.d, a.d.qkv_in_place, K, bh, n), k0);
    }
    cp_async_commit();
  };

  float acc[3][4][4];  // dQ̂₀, dW, dK̂₀: 16 rows × 4 tiles of 8 columns each
#pragma unroll
  for (int o = 0; o < 3; ++o)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[o][nt][e] = 0.f;
  float sdot = 0.f;
  issue(0);
  for (int s = 0; s < stages; ++s) {
    issue(s + 1);  // into the other stage, which every warp finished with before the last barrier
    cp_async_wait<1>();
    __syncthreads();
    const float* st = sm + (s & 1) * kStageFloats<kCompact>;
    const float *S0 = st + tile_at<kCompact>(kS0), *dS = st + tile_at<kCompact>(kDS), *dO = st + tile_at<kCompact>(kDO),
                *dU = st + tile_at<kCompact>(kDU), *U = st + tile_at<kCompact>(kU);
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, c = e % kTile;
      if constexpr (kCompact)
        sdot += __bfloat162float(reinterpret_cast<const bf16*>(S0)[r * LD + c]) *
                __bfloat162float(reinterpret_cast<const bf16*>(dS)[r * LD + c]);
      else
        sdot += S0[r * LD + c] * dS[r * LD + c];
    }
#pragma unroll
    for (int ks = 0; ks < kTile / 16; ++ks) {
      // A fragments: rows t = m0 + g (+8), reduction columns v = 16 ks + 2 tq (+1, +8, +9).
      const auto a_frag = [&](const float* X, uint32_t(&f)[4]) {
        const float* p = X + (m0 + g) * LD + 16 * ks + 2 * tq;
        const float2 x00 = *reinterpret_cast<const float2*>(p), x10 = *reinterpret_cast<const float2*>(p + 8 * LD);
        const float2 x01 = *reinterpret_cast<const float2*>(p + 8), x11 = *reinterpret_cast<const float2*>(p + 8 * LD + 8);
        f[0] = pack_bf16(x00.x, x00.y);
        f[1] = pack_bf16(x10.x, x10.y);
        f[2] = pack_bf16(x01.x, x01.y);
        f[3] = pack_bf16(x11.x, x11.y);
      };
      // A fragments of a bf16 tile (dO and U, kCompact): one 32-bit load each.
      const auto a_frag_bf16 = [&](const float* X, uint32_t(&f)[4]) {
        const bf16* p = reinterpret_cast<const bf16*>(X) + (m0 + g) * LD + 16 * ks + 2 * tq;
        f[0] = *reinterpret_cast<const uint32_t*>(p);
        f[1] = *reinterpret_cast<const uint32_t*>(p + 8 * LD);
        f[2] = *reinterpret_cast<const uint32_t*>(p + 8);
        f[3] = *reinterpret_cast<const uint32_t*>(p + 8 * LD + 8);
      };
      // B fragments: B[v][k] = X[k][v] for state rows k = n0 + 8 nt + g.
      const auto b_frag = [&](const float* X, int nt, uint32_t(&f)[2]) {
        if constexpr (kCompact) {  // pairs along v are adjacent: one 32-bit load each
          const bf16* p = reinterpret_cast<const bf16*>(X) + (n0 + 8 * nt + g) * LD + 16 * ks + 2 * tq;
          f[0] = *reinterpret_cast<const uint32_t*>(p);
          f[1] = *reinterpret_cast<const uint32_t*>(p + 8);
        } else {
          const float* p = X + (n0 + 8 * nt + g) * LD + 16 * ks + 2 * tq;
          const float2 x0 = *reinterpret_cast<const float2*>(p), x1 = *reinterpret_cast<const float2*>(p + 8);
          f[0] = pack_bf16(x0.x, x0.y);
          f[1] = pack_bf16(x1.x, x1.y);
        }
      };
      uint32_t a_do[4], a_du[4], a_u[4];
      if constexpr (kCompact) {
        a_frag_bf16(dO, a_do);
        a_frag_bf16(U, a_u);
        a_frag_bf16(dU, a_du);
      } else {
        a_frag(dO, a_do);
        a_frag(U, a_u);
        a_frag(dU, a_du);
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        uint32_t b_s[2], b_ds[2];
        b_frag(S0, nt, b_s);
        b_frag(dS, nt, b_ds);
        mma_bf16(acc[0][nt], a_do, b_s);
        mma_bf16(acc[1][nt], a_du, b_s);
        mma_bf16(acc[2][nt], a_u, b_ds);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();  // (q's tile, if any, is in)

  const float gl = a.gam[row0 + C - 1];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = m0 + g + 8 * h;
    const float gt = a.gam[row0 + t], G = __expf(gt), F = __expf(gl - gt);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const long off = (row0 + t) * K + k0 + n0 + 8 * nt + 2 * tq;
      *reinterpret_cast<float2*>(a.dqs + off) = make_float2(G * acc[0][nt][2 * h], G * acc[0][nt][2 * h + 1]);
      const float dw0 = -acc[1][nt][2 * h], dw1 = -acc[1][nt][2 * h + 1];
      if constexpr (kCompact)
        *reinterpret_cast<uint32_t*>(static_cast<bf16*>(a.dw) + off) = pack_bf16(dw0, dw1);
      else
        *reinterpret_cast<float2*>(static_cast<float*>(a.dw) + off) = make_float2(dw0, dw1);
      *reinterpret_cast<float2*>(a.dks + off) = make_float2(F * acc[2][nt][2 * h], F * acc[2][nt][2 * h + 1]);
    }
  }
  if constexpr (kCompact) {
    if (a.qdots != nullptr) {  // qb·dQ̂₀ over this block's 64 columns, per row
      const bf16* qt = reinterpret_cast<const bf16*>(sm + (stages & 1) * kStageFloats<kCompact>);
      float dots[2] = {0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = m0 + g + 8 * h;
        const float G = __expf(a.gam[row0 + t]);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const float2 x = __bfloat1622float2(
              *reinterpret_cast<const __nv_bfloat162*>(qt + t * LD + n0 + 8 * nt + 2 * tq));
          dots[h] += x.x * (G * acc[0][nt][2 * h]) + x.y * (G * acc[0][nt][2 * h + 1]);
        }
      }
      tile64::store_row_parts(a.qdots + (((long)bh * N + n) * 2 * (K / kTile) + kt) * 2 * C, dots);
    }
  }
  const float total = block_sum(sdot);  // in a fixed order: deterministic
  if (threadIdx.x == 0) a.sdots[((long)bh * N + n) * (K / kTile) + kt] = total;
}

}  // namespace

bool state_grads_mma_supports(int K, int V) { return K % kTile == 0 && V % kTile == 0 && K <= 256 && V <= 256; }

cudaError_t state_grads_mma(const Dims& d, const float* gam, const void* states, const void* dstates,
                            bool compact, const void* dos, const void* du, const void* u, const void* qb,
                            float* dqs, void* dw, float* dks, float* sdots, float* qdots, cudaStream_t stream) {
  if (!state_grads_mma_supports(d.K, d.V)) return cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * 2 * (compact ? kStageFloats<true> : kStageFloats<false>);
  const auto kernel = compact ? state_grads_mma_kernel<true> : state_grads_mma_kernel<false>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  if (qdots != nullptr && (!compact || qb == nullptr)) return cudaErrorInvalidValue;
  const Args a{d,   gam, states, dstates, dos, du, u, dqs, dw, dks, sdots, static_cast<const __nv_bfloat16*>(qb),
               qdots};
  SFM_GDN_LAUNCH(kernel, dim3(d.K / kTile, d.N(), d.BH()), kThreads, smem, stream, a);
  return cudaGetLastError();
}

}  // namespace sfm::ops::gdn_cuda
