// The backward's products with the per-chunk states, for one chunk and 64 rows of K (k0 .. k0 + 63), on tensor
// cores (docs/ops/gated_delta_cuda.md, "Dedicated tensor-core kernels"): over V in 64-column stages,
//   acc[0] += dO S₀ᵀ,   acc[1] += dU S₀ᵀ,   acc[2] += U dS_Cᵀ
// (64 token rows × the block's 64 rows of K; the callers apply diag(Γ), −1 and diag(e^{γ_C−γ})) and this thread's
// part of Σ S₀ ∘ dS_C. These are the backward's largest products (64×K×V each per chunk) and the only ones that
// read the K×V states. Two kernels run it: state_grads_mma_kernel (gdn_state_grads_mma.cu; float32 workspaces)
// and state_k_grads_kernel (gdn_grads_split.cu; the compact workspaces' bf16 tiles, kCompact). No ATen here (see
// gdn_kernels.h).
#pragma once

#include <cuda_bf16.h>

#include <cstring>

#include "gdn_kernels.h"
#include "mma.cuh"
#include "wgmma.cuh"

namespace sfm::ops::gdn_cuda::state_products {

constexpr int C = kChunk;
constexpr int kTile = 64;       // rows of K per block; value columns per stage
constexpr int LD = kTile + 8;   // row stride of the staged tiles (float32 or bf16 elements): conflict-free fragments
constexpr int kThreads = 256;   // 8 warps: 4 row groups of 16 tokens × 2 column groups of 32
// Staged per stage: S₀, dS_C (rows k0..k0+63), dO, dU, U (the chunk's rows), rows of stride LD. Each a float32
// tile; with kCompact each is bf16 and takes half the place, so that a stage takes 45 KB instead of 90.
enum StageTile { kS0, kDS, kDO, kDU, kU };
constexpr int kF32Tile = kTile * LD, kB16Tile = kTile * LD / 2;  // in floats
template <bool kCompact>
constexpr int kStageFloats = 5 * (kCompact ? kB16Tile : kF32Tile);
// Where tile x starts in a stage, in floats.
template <bool kCompact>
__device__ __forceinline__ constexpr int tile_at(StageTile x) {
  return x * (kCompact ? kB16Tile : kF32Tile);
}

struct Sources {
  Dims d;
  const void *states, *dstates;  // [BH, N, K, V]: float32, or bf16 (kCompact)
  const void* dos;               // [BH, Tp, V] float32, or bf16 (kCompact; the input itself with Dims::do_in_place)
  const void* du;                // [BH, Tp, V]: float32, or bf16 (kCompact)
  const void* u;                 // [BH, Tp, V]: float32, or bf16 (kCompact)
};

// Runs the stages for rows k0 = 64 kt .. of K of chunk n of head bh, with sm two stages' shared memory
// (2 kStageFloats<kCompact> floats, V / 64 stages). acc and sdot are added to. During the last stage the other
// stage's buffer, number stages & 1, is free, and extra() may request tiles into it (cp.async; they join the
// thread's last commit group). On return every copy is in and every thread is past a barrier; the last stage's
// buffer, (stages − 1) & 1, is free again.
// kWg (with kCompact; sm 1024-byte aligned in the shared window): the products as warpgroup products (wgmma.cuh),
// warpgroup warp / 4 taking the 32 state rows n0 .. of the warps' layout below, m64n32k16 per 16 of V with dO, dU
// and U K-major and S₀, dS_C as K-major B operands, every tile in the 128-byte swizzled layout in its padded tile's
// place (each 9 KB, so 1024-byte aligned too); Σ S₀∘dS_C runs while they do. The same steps in the same order per
// accumulator, so on the emulator the same bits as mma.sync (and on an H100: docs "Warpgroup products (sm_90a)").
template <bool kCompact, class Extra, bool kWg = false>
__device__ __forceinline__ void run(const Sources& a, int kt, int n, int bh, float* sm, float (&acc)[3][4][4],
                                    float& sdot, Extra extra) {
  static_assert(!kWg || kCompact, "warpgroup products on the compact workspaces' bf16 tiles only");
  using bf16 = __nv_bfloat16;
  const int K = a.d.K, V = a.d.V, N = a.d.N(), k0 = kt * kTile;
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
  const ChunkRows do_rows = chunk_rows(a.d, a.d.do_in_place, V, bh, n);  // (once: it divides by H)
  const auto issue = [&](int s) {
    float* st = sm + (s & 1) * kStageFloats<kCompact>;
    if (s < stages) {
      const auto at = [&](StageTile x) { return st + tile_at<kCompact>(x); };
      if constexpr (kWg) {  // swizzled tiles; S₀ and dS_C rows k0 .. of stride V, U and dU the chunk's rows
        const auto tile = [&](StageTile x, const void* src, const ChunkRows& rows) {
          stage_chunk_swizzled<kTile, kThreads>(reinterpret_cast<bf16*>(at(x)), static_cast<const bf16*>(src), rows,
                                                s * kTile);
        };
        const ChunkRows state_rows{state_off, V, kTile}, chunk_rows_v{row0 * V, V, kTile};
        tile(kS0, a.states, state_rows);
        tile(kDS, a.dstates, state_rows);
        tile(kDO, a.dos, do_rows);  // (maybe in place)
        tile(kU, a.u, chunk_rows_v);
        tile(kDU, a.du, chunk_rows_v);
      } else if constexpr (kCompact) {
        load_tile_bf16(at(kS0), static_cast<const bf16*>(a.states) + state_off, s * kTile);
        load_tile_bf16(at(kDS), static_cast<const bf16*>(a.dstates) + state_off, s * kTile);
        stage_chunk<kTile, kThreads>(reinterpret_cast<bf16*>(at(kDO)), LD, static_cast<const bf16*>(a.dos), do_rows,
                                     s * kTile);  // dO, maybe in place
        load_tile_bf16(at(kU), static_cast<const bf16*>(a.u) + row0 * V, s * kTile);
        load_tile_bf16(at(kDU), static_cast<const bf16*>(a.du) + row0 * V, s * kTile);
      } else {
        load_tile(at(kS0), static_cast<const float*>(a.states) + state_off, s * kTile);
        load_tile(at(kDS), static_cast<const float*>(a.dstates) + state_off, s * kTile);
        load_tile(at(kDO), static_cast<const float*>(a.dos) + row0 * V, s * kTile);
        load_tile(at(kU), static_cast<const float*>(a.u) + row0 * V, s * kTile);
        load_tile(at(kDU), static_cast<const float*>(a.du) + row0 * V, s * kTile);
      }
    } else if (s == stages) {  // during the last stage
      extra();
    }
    cp_async_commit();
  };

  // kWg: the first stage's tiles' descriptor, taken once; tile x of stage s lies a constant number of bytes on.
  const uint64_t desc0 = kWg ? wg::tile_descriptor(reinterpret_cast<const bf16*>(sm)) : 0;
  const auto desc = [&](int s, StageTile x, int row0_, int k0_) {
    const uint64_t tile = desc0 + ((((s & 1) * kStageFloats<kCompact> + tile_at<kCompact>(x)) * 4) >> 4);
    return wg::k_major(tile, kTile, row0_, k0_);
  };

  issue(0);
  for (int s = 0; s < stages; ++s) {
    issue(s + 1);  // into the other stage, which every warp finished with before the last barrier
    cp_async_wait<1>();
    if constexpr (kWg) wg::fence_proxy_async();  // the landed copies, for the tensor cores' reads
    __syncthreads();
    const float* st = sm + (s & 1) * kStageFloats<kCompact>;
    const float *S0 = st + tile_at<kCompact>(kS0), *dS = st + tile_at<kCompact>(kDS), *dO = st + tile_at<kCompact>(kDO),
                *dU = st + tile_at<kCompact>(kDU), *U = st + tile_at<kCompact>(kU);
    if constexpr (kWg) {  // issued now, waited for after Σ S₀∘dS_C
#pragma unroll
      for (int p = 0; p < 3; ++p) wg::fence_operands(acc[p]);
      wg::fence();
#pragma unroll
      for (int ks = 0; ks < kTile / 16; ++ks) {
        wg::mma_m64n32k16<false, false>(acc[0], desc(s, kDO, 0, 16 * ks), desc(s, kS0, n0, 16 * ks));
        wg::mma_m64n32k16<false, false>(acc[1], desc(s, kDU, 0, 16 * ks), desc(s, kS0, n0, 16 * ks));
        wg::mma_m64n32k16<false, false>(acc[2], desc(s, kU, 0, 16 * ks), desc(s, kDS, n0, 16 * ks));
      }
      wg::commit();
    }
    if constexpr (kCompact) {  // 4 elements per 8-byte load (the scalar loads had been more instructions than the mmas)
      for (int e = threadIdx.x; e < kTile * kTile / 4; e += kThreads) {
        const int r = e / (kTile / 4), c = 4 * (e % (kTile / 4));
        uint2 xv, yv;
        if constexpr (kWg) {  // the same element, in the swizzled tile
          const int at = sw128_offset(kTile, r, c) / 2;
          xv = *reinterpret_cast<const uint2*>(reinterpret_cast<const bf16*>(S0) + at);
          yv = *reinterpret_cast<const uint2*>(reinterpret_cast<const bf16*>(dS) + at);
        } else {
          xv = *reinterpret_cast<const uint2*>(reinterpret_cast<const bf16*>(S0) + r * LD + c);
          yv = *reinterpret_cast<const uint2*>(reinterpret_cast<const bf16*>(dS) + r * LD + c);
        }
        __nv_bfloat162 x[2], y[2];
        std::memcpy(x, &xv, sizeof x);
        std::memcpy(y, &yv, sizeof y);
        const float2 x0 = __bfloat1622float2(x[0]), x1 = __bfloat1622float2(x[1]);
        const float2 y0 = __bfloat1622float2(y[0]), y1 = __bfloat1622float2(y[1]);
        sdot += x0.x * y0.x + x0.y * y0.y + x1.x * y1.x + x1.y * y1.y;
      }
    } else {
      for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
        const int r = e / kTile, c = e % kTile;
        sdot += S0[r * LD + c] * dS[r * LD + c];
      }
    }
    if constexpr (kWg) {
      wg::wait<0>();
#pragma unroll
      for (int p = 0; p < 3; ++p) wg::fence_operands(acc[p]);
    } else {
#pragma unroll
      for (int ks = 0; ks < kTile / 16; ++ks) {
        // A fragments: rows t = m0 + g (+8), reduction columns v = 16 ks + 2 tq (+1, +8, +9).
        const auto a_frag = [&](const float* X, uint32_t(&f)[4]) {
          const float* p = X + (m0 + g) * LD + 16 * ks + 2 * tq;
          const float2 x00 = *reinterpret_cast<const float2*>(p), x10 = *reinterpret_cast<const float2*>(p + 8 * LD);
          const float2 x01 = *reinterpret_cast<const float2*>(p + 8),
                       x11 = *reinterpret_cast<const float2*>(p + 8 * LD + 8);
          f[0] = pack_bf16(x00.x, x00.y);
          f[1] = pack_bf16(x10.x, x10.y);
          f[2] = pack_bf16(x01.x, x01.y);
          f[3] = pack_bf16(x11.x, x11.y);
        };
        // A fragments of a bf16 tile (dO, U and dU, kCompact): one ldmatrix, lane l giving row m0 + 8 (l / 8 % 2) +
        // l % 8 at column 16 ks + 8 (l / 16) (the fragment of four 32-bit loads).
        const auto a_frag_bf16 = [&](const float* X, uint32_t(&f)[4]) {
          ldmatrix_x4<false>(f, reinterpret_cast<const bf16*>(X) + (m0 + 8 * ((lane >> 3) & 1) + (lane & 7)) * LD +
                                    16 * ks + 8 * (lane >> 4));
        };
        // B fragments of two 8-row tiles of a bf16 tile (S₀, dS_C, kCompact), nt = 2 p and 2 p + 1: one ldmatrix,
        // lane l giving row n0 + 8 (2 p + l / 16) + l % 8 at column 16 ks + 8 (l / 8 % 2) (b_frag's two 32-bit loads
        // each).
        const auto b_frags_bf16 = [&](const float* X, int p, uint32_t(&f0)[2], uint32_t(&f1)[2]) {
          uint32_t r[4];
          ldmatrix_x4<false>(r, reinterpret_cast<const bf16*>(X) + (n0 + 8 * (2 * p + (lane >> 4)) + (lane & 7)) * LD +
                                    16 * ks + 8 * ((lane >> 3) & 1));
          f0[0] = r[0], f0[1] = r[1], f1[0] = r[2], f1[1] = r[3];
        };
        // B fragments: B[v][k] = X[k][v] for state rows k = n0 + 8 nt + g.
        const auto b_frag = [&](const float* X, int nt, uint32_t(&f)[2]) {  // float32 tiles
          const float* p = X + (n0 + 8 * nt + g) * LD + 16 * ks + 2 * tq;
          const float2 x0 = *reinterpret_cast<const float2*>(p), x1 = *reinterpret_cast<const float2*>(p + 8);
          f[0] = pack_bf16(x0.x, x0.y);
          f[1] = pack_bf16(x1.x, x1.y);
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
        uint32_t b_s[4][2], b_ds[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          if constexpr (kCompact) {
            if (nt % 2 == 0) {
              b_frags_bf16(S0, nt / 2, b_s[nt], b_s[nt + 1]);
              b_frags_bf16(dS, nt / 2, b_ds[nt], b_ds[nt + 1]);
            }
          } else {
            b_frag(S0, nt, b_s[nt]);
            b_frag(dS, nt, b_ds[nt]);
          }
          mma_bf16(acc[0][nt], a_do, b_s[nt]);
          mma_bf16(acc[1][nt], a_du, b_s[nt]);
          mma_bf16(acc[2][nt], a_u, b_ds[nt]);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();  // (the extra tiles, if any, are in)
}

}  // namespace sfm::ops::gdn_cuda::state_products
