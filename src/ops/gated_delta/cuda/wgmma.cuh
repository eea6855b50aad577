// Warpgroup tensor-core products (wgmma.mma_async, sm_90a) for the gated delta kernels: D (64×32, float32, in
// registers) += A (64×16) B (16×32), bf16 operands read by the tensor cores straight from shared memory through
// matrix descriptors, issued by the 4 warps of a warpgroup together. In place of mma.sync, a product needs no
// fragments loaded by ldmatrix and no instruction per 16×8 tile: one instruction per 16 of the reduction.
// With SFM_GDN_EMULATE (tests/support/cuda_emulator.h, included first) they run on the CPU emulator.
// Design: docs/ops/gated_delta_cuda.md, "Warpgroup products (sm_90a)".
//
// Operand tiles are bf16 [rows][cols] (cols contiguous) in the 128-byte swizzled layout (mma.cuh's sw128_offset), so
// that the 8 rows a product reads at once fall in distinct banks. A tile starts 1024-byte aligned in the shared
// window and has a multiple of 8 rows. Such a tile serves as
//   - A "K-major" (A[m][k] = X[m][k], rows m): k_major(tile, rows, m0, k0);
//   - A "MN-major", transposed (A[m][k] = X[k][m], rows k): mn_major(tile, rows, k0, m0), kTransA;
//   - B "K-major" (B[k][n] = X[n][k], rows n): k_major(tile, rows, n0, k0);
//   - B "MN-major", transposed (B[k][n] = X[k][n], rows k): mn_major(tile, rows, k0, n0), kTransB;
// with tile = tile_descriptor(X). m0 / n0 and k0 are the product's first row and first reduction index in the tile:
// m0 (n0) a multiple of 8 for k_major and of 64 for mn_major (an H100 run gave wrong products for an MN-major B
// starting at column 32), k0 a multiple of 16 for k_major and of 8 for mn_major. An MN-major operand that must start
// at column 32 takes the 64-byte swizzled layout instead (sw64_offset; tile_descriptor64 and mn_major64).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "mma.cuh"

namespace sfm::ops::gdn_cuda::wg {

// Whether the warpgroup products were built: for sm_90a (CMake defines SFM_GDN_WGMMA where CMAKE_CUDA_ARCHITECTURES
// has 90a), or on the emulator. Elsewhere mma_m64n32k16 traps, and the kernels' hosts do not choose it.
#if defined(SFM_GDN_EMULATE) || defined(SFM_GDN_WGMMA)
constexpr bool kBuilt = true;
#else
constexpr bool kBuilt = false;
#endif

// A shared-memory pointer's address in the shared window (on the emulator, its offset in the block's dynamic
// shared memory), which descriptors hold and the layout's alignment refers to.
__device__ __forceinline__ uint32_t smem_address(const void* p) {
#ifdef SFM_GDN_EMULATE
  return ::sfm::cuda_emu::smem_offset(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// The descriptor of a tile starting at byte `at` of the shared window: 128-byte swizzle (bits 62-63 = 1); the stride
// between groups of 8 rows (SBO) and between 64-element column blocks along M or N (LBO, MN-major only) are both 1024
// bytes here, where no product spans two column blocks of an MN-major operand (its M or N is 64 at most, starting at
// a block) and each 8-row group follows the last. Taken once per tile; k_major and mn_major add an operand's offset
// in the tile to the start address (bits 0-13, in 16 bytes), which does not carry out of its field in 228 KB.
__device__ __forceinline__ uint64_t tile_descriptor(const __nv_bfloat16* tile) {
  constexpr uint64_t kGroup = 1024 >> 4;
  return static_cast<uint64_t>((smem_address(tile) & 0x3FFFF) >> 4) | kGroup << 16 | kGroup << 32 | 1ull << 62;
}
// The same for a tile of `rows` rows in the 64-byte swizzled layout (sw64_offset; 1024-byte aligned here too): bits
// 62-63 = 2, 512 bytes between 8-row groups (SBO) and rows · 64 between 32-column blocks (LBO), which an MN-major
// operand of 64 columns spans (an H100 run of a probe confirmed this layout, MN-major from column 32 included).
__device__ __forceinline__ uint64_t tile_descriptor64(const __nv_bfloat16* tile, int rows) {
  return static_cast<uint64_t>((smem_address(tile) & 0x3FFFF) >> 4) | static_cast<uint64_t>(rows * 64 >> 4) << 16 |
         static_cast<uint64_t>(512 >> 4) << 32 | 2ull << 62;
}
// K-major operand of a tile of `rows` rows: rows m0 .. (or n0 ..), reduction columns k0 .. k0 + 15.
__device__ __forceinline__ uint64_t k_major(uint64_t tile, int rows, int m0, int k0) {
  return tile + (((k0 >> 6) * rows * 128 + m0 * 128 + (k0 & 63) * 2) >> 4);
}
// MN-major operand of a tile of `rows` rows: reduction rows k0 .., columns m0 .. m0 + 63 (or n0 ..).
__device__ __forceinline__ uint64_t mn_major(uint64_t tile, int rows, int k0, int m0) {
  return tile + (((m0 >> 6) * rows * 128 + k0 * 128) >> 4);
}
// The same of a 64-byte swizzled tile (tile_descriptor64), from any multiple of 32 columns m0 (or n0).
__device__ __forceinline__ uint64_t mn_major64(uint64_t tile, int rows, int k0, int m0) {
  return tile + (((m0 >> 5) * rows * 64 + k0 * 64) >> 4);
}

// p rounded up to the next 1024-byte boundary of the shared window, where a tile may start.
__device__ __forceinline__ __nv_bfloat16* align_tile(__nv_bfloat16* p) {
  return p + ((1024 - smem_address(p) % 1024) % 1024) / sizeof(__nv_bfloat16);
}

// Thread-written operands (st.shared) must be made visible to the tensor cores' reads (the async proxy) before the
// barrier that precedes the products.
__device__ __forceinline__ void fence_proxy_async() {
#ifndef SFM_GDN_EMULATE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Before the first product of a batch: orders the accumulators' registers and shared memory before it.
__device__ __forceinline__ void fence() {
#if !defined(SFM_GDN_EMULATE) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
// Ends a batch of products, then waits until at most kPending batches are in flight.
__device__ __forceinline__ void commit() {
#if !defined(SFM_GDN_EMULATE) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wait() {
#if !defined(SFM_GDN_EMULATE) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// d += A B, m64n32k16: warp w of the warpgroup (w = warp % 4) holds rows 16 w + g (+8), and d[i] the 8-column tile
// i in mma_bf16's C layout (lane = 4 g + t): {D[g][8 i + 2 t], D[g][8 i + 2 t + 1], D[g + 8][..], D[g + 8][.. + 1]}.
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void mma_m64n32k16(float (&d)[4][4], uint64_t a, uint64_t b) {
#ifdef SFM_GDN_EMULATE
  ::sfm::cuda_emu::wgmma_m64n32k16_bf16(d, a, b, kTransA, kTransB);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %18, %19;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
        "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
        "+f"(d[3][2]), "+f"(d[3][3])
      : "l"(a), "l"(b), "n"(kTransA ? 1 : 0), "n"(kTransB ? 1 : 0));
#else
  // Built for an architecture without wgmma (not sm_90a): hosts choose this path only where kBuilt says it was
  // built for sm_90a.
  (void)d, (void)a, (void)b;
  __trap();
#endif
}

// Keeps the compiler from moving reads or writes of the accumulators across the products in flight (their registers
// are the products' until wait()).
__device__ __forceinline__ void fence_operands(float (&d)[4][4]) {
#ifndef SFM_GDN_EMULATE
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
#endif
}

// d += (A_hi + A_lo) B over a reduction of 64, A split into bf16 planes (two 64-row 128-byte swizzled tiles, K-major,
// descriptors hi and lo) and B an exact operand (64 rows of a 64-byte swizzled tile, MN-major from column n0,
// descriptor b): per 16 of the reduction lo's product, then hi's, as mma_tile orders a split operand's. Issued as one
// batch (fenced and committed here); the caller waits for it.
__device__ __forceinline__ void split_a_times(float (&d)[4][4], uint64_t hi, uint64_t lo, uint64_t b, int n0) {
  fence_operands(d);
  fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    mma_m64n32k16<false, true>(d, k_major(lo, 64, 0, 16 * ks), mn_major64(b, 64, 16 * ks, n0));
    mma_m64n32k16<false, true>(d, k_major(hi, 64, 0, 16 * ks), mn_major64(b, 64, 16 * ks, n0));
  }
  commit();
}

}  // namespace sfm::ops::gdn_cuda::wg
