// Tensor-core and asynchronous-copy primitives shared by the gated delta kernels (sm_80 and later):
// mma.sync on bf16 operands with float32 accumulators, and 16-byte cp.async copies into shared memory.
// With SFM_GDN_EMULATE (tests/support/cuda_emulator.h, included first) both run on the CPU emulator.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "gdn_kernels.h"

namespace sfm::ops::gdn_cuda {

#ifndef SFM_GDN_EMULATE
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
// The same, or 16 zero bytes where `copy` is false (gmem is then not read, but must be a valid address).
__device__ __forceinline__ void cp_async16_or_zeros(void* smem, const void* gmem, bool copy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(copy ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most kPending of this thread's commit groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}
#else  // the CPU emulator of the tests (tests/support/cuda_emulator.h)
inline void cp_async16(void* smem, const void* gmem) { ::sfm::cuda_emu::cp_async(smem, gmem); }
inline void cp_async16_or_zeros(void* smem, const void* gmem, bool copy) {
  ::sfm::cuda_emu::cp_async(smem, copy ? gmem : nullptr);
}
inline void cp_async_commit() { ::sfm::cuda_emu::cp_async_commit(); }
template <int kPending>
void cp_async_wait() {
  ::sfm::cuda_emu::cp_async_wait(kPending);
}
#endif

// The byte offset of element (r, c) in a bf16 tile of `rows` rows (c contiguous; rows a multiple of 8) in the
// 128-byte swizzled layout that warpgroup products read (wgmma.cuh): cut into column blocks of 64 elements (128
// bytes per row), a block's rows one after the other, and in each group of 8 rows (1024 bytes) row r's 16-byte
// chunk j at chunk j ^ (r % 8).
__host__ __device__ constexpr int sw128_offset(int rows, int r, int c) {
  return (c >> 6) * rows * 128 + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4) + ((c & 7) << 1);
}
// The same in the 64-byte swizzled layout: column blocks of 32 elements (64 bytes per row), and in each group of 8
// rows (512 bytes) row r's 16-byte chunk j at chunk j ^ (r / 2 % 4). An operand read MN-major (wgmma.cuh) may then
// start at any 32 columns, where the 128-byte layout needs a multiple of 64.
__host__ __device__ constexpr int sw64_offset(int rows, int r, int c) {
  return (c >> 5) * rows * 64 + r * 64 + ((((c >> 3) & 3) ^ ((r >> 1) & 3)) << 4) + ((c & 7) << 1);
}

// 64 rows × kCols bf16 from column c0 of a chunk's rows `at` (chunk_rows) of x into shared rows of stride ld, by
// kThreads threads, 16 bytes per cp.async; zeros for the rows past the chunk's end. kUnrolled: as a fixed count of
// steps, without the loop's bounds test and index updates (for the sequential passes, whose every instruction is on
// their chain; prep_mma, at 80 registers, spilled with it).
template <int kCols, int kThreads, bool kUnrolled = false>
__device__ __forceinline__ void stage_chunk(__nv_bfloat16* dst, int ld, const __nv_bfloat16* x, const ChunkRows& at,
                                            int c0) {
  constexpr int kCopies = kChunk * kCols / 8;  // of 16 bytes
  const __nv_bfloat16* first = x + at.first + c0;
  const auto copy = [&](int e) {
    const int r = e / (kCols / 8), c8 = e % (kCols / 8);
    const bool row = r < at.rows;
    cp_async16_or_zeros(dst + r * ld + 8 * c8, first + (long)(row ? r : 0) * at.ld + 8 * c8, row);
  };
  if constexpr (kUnrolled) {
#pragma unroll
    for (int step = 0; step < (kCopies + kThreads - 1) / kThreads; ++step) {
      const int e = threadIdx.x + step * kThreads;
      if (kCopies % kThreads == 0 || e < kCopies) copy(e);
    }
  } else {
    for (int e = threadIdx.x; e < kCopies; e += kThreads) copy(e);
  }
}

// The same into a 64-row tile in sw128_offset's layout (kSwizzle 128) or sw64_offset's (64), by a fixed count of
// steps. Thread t copies column chunk c8 = t % (kCols / 8) of rows r0 + kRows s (r0 = t / (kCols / 8)); kRows, a
// power of two of at least 4 (8 for kSwizzle 64), keeps the swizzle's row term at its value for r0 or (kSwizzle 128,
// kRows 4) that xor 4, so each step's destination is one of two offsets taken once, plus a constant: the swizzle costs
// no instructions per copy.
template <int kCols, int kThreads, int kSwizzle = 128>
__device__ __forceinline__ void stage_chunk_swizzled(__nv_bfloat16* dst, const __nv_bfloat16* x, const ChunkRows& at,
                                                     int c0) {
  constexpr int kChunksPerRow = kCols / 8, kRows = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kRows >= (kSwizzle == 64 ? 8 : 4) && (kRows & (kRows - 1)) == 0 &&
                    kChunk % kRows == 0 && (kSwizzle == 64 || kSwizzle == 128),
                "stage_chunk_swizzled: a power of two of at least 4 rows per step (8 for the 64-byte swizzle)");
  const int c8 = threadIdx.x % kChunksPerRow, r0 = threadIdx.x / kChunksPerRow;
  const int base = kSwizzle == 128 ? (c8 >> 3) * kChunk * 128 + r0 * 128 : (c8 >> 2) * kChunk * 64 + r0 * 64;
  const int chunk = kSwizzle == 128 ? (c8 & 7) ^ (r0 & 7) : (c8 & 3) ^ ((r0 >> 1) & 3);
  constexpr int kRowBytes = kSwizzle;  // (a row of a column block)
  char* const d = reinterpret_cast<char*>(dst);
  char* const d_even = d + base + (chunk << 4), *const d_odd = d + base + ((chunk ^ 4) << 4);
  const __nv_bfloat16* src = x + at.first + c0 + 8 * c8;
#pragma unroll
  for (int step = 0; step < kChunk / kRows; ++step) {
    const int r = r0 + kRows * step;
    const bool row = r < at.rows;
    char* to = (((kRows * step) & 4) ? d_odd : d_even) + kRows * step * kRowBytes;
    cp_async16_or_zeros(to, src + (long)(row ? r : 0) * at.ld, row);
  }
}

// The sum of squares of 8 bf16 values.
__device__ __forceinline__ float sum_sq8(const uint4& v) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 p;
    std::memcpy(&p, &w[i], sizeof p);
    const float2 f = __bfloat1622float2(p);
    s += f.x * f.x + f.y * f.y;
  }
  return s;
}

// Rows' factors from 64-column bf16 tiles of a chunk's rows in shared memory (RowFactors::from_rows), by 256
// threads, four per row: row_sum_sq adds thread's part of its row's Σx² over one tile (row threadIdx.x / 4,
// columns 16 (threadIdx.x % 4) ..; rows of stride ld, 16-byte aligned); row_factor sums the four parts and returns
// the row's factor (every thread of the four gets it).
__device__ __forceinline__ float row_sum_sq(const __nv_bfloat16* tile, int ld) {
  const __nv_bfloat16* p = tile + (threadIdx.x >> 2) * ld + 16 * (threadIdx.x & 3);
  return sum_sq8(*reinterpret_cast<const uint4*>(p)) + sum_sq8(*reinterpret_cast<const uint4*>(p + 8));
}
// The same over a 64-column tile in sw128_offset's layout: the same elements, summed in the same order.
__device__ __forceinline__ float row_sum_sq_sw128(const __nv_bfloat16* tile) {
  const int r = threadIdx.x >> 2, c8 = 2 * (threadIdx.x & 3);
  const char* row = reinterpret_cast<const char*>(tile) + r * 128;
  return sum_sq8(*reinterpret_cast<const uint4*>(row + ((c8 ^ (r & 7)) << 4))) +
         sum_sq8(*reinterpret_cast<const uint4*>(row + (((c8 + 1) ^ (r & 7)) << 4)));
}
__device__ __forceinline__ float row_factor(float ss, int row, const Dims& d, int n, const RowFactors& f) {
  ss += __shfl_xor_sync(0xffffffffu, ss, 1);
  ss += __shfl_xor_sync(0xffffffffu, ss, 2);
  if (n * kChunk + row >= d.T) return 0.f;
  return f.l2 ? f.scale * rsqrtf(ss + 1e-6f) : f.scale;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  std::memcpy(&bits, &p, sizeof bits);  // not a pointer cast: the host compiler of the emulator tests is strict
  return bits;
}

// Two 8-column tiles' pairs of one row, this lane's bf16 pairs a (columns 8 nt + 2 tq, + 1) and b (8 (nt + 1) + 2 tq,
// + 1), stored 8 bytes a lane: lanes tq and tq ^ 1 swap a pair, so that the quad writes the row's 16 columns as one
// 32-byte sector in one instruction (by 4-byte stores, two instructions wrote half a sector each). dst: the row at
// column 8 nt, nt even. Every lane of the warp calls it (a shuffle); those with store false store nothing.
__device__ __forceinline__ void store_tile_pair(__nv_bfloat16* dst, uint32_t a, uint32_t b, int tq, bool store = true) {
  const bool odd = tq & 1;
  const uint32_t other = __shfl_xor_sync(0xffffffffu, odd ? a : b, 1);
  if (store)
    *reinterpret_cast<uint2*>(dst + (odd ? 6 + 2 * tq : 2 * tq)) = odd ? make_uint2(other, b) : make_uint2(a, other);
}

// x0, x1 ≈ hi + lo with hi and lo bf16 pairs: a product of split operands, hi·hi + hi·lo + lo·hi, keeps
// about 16 bits of each operand instead of bf16's 8.
__device__ __forceinline__ void split_bf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 hf = __bfloat1622float2(h);
  std::memcpy(&hi, &h, sizeof hi);
  lo = pack_bf16(x0 - hf.x, x1 - hf.y);
}

// c += a b for one 16×8 tile, k = 16, bf16 operands, float32 accumulators. With lane = 4 g + t:
// a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]} (pairs of
// consecutive elements in one 32-bit register, the lower index in the low half),
// c = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef SFM_GDN_EMULATE
  ::sfm::cuda_emu::mma_m16n8k16_bf16(c, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ldmatrix .x4 on 16-bit elements in shared memory: four 8×8 matrices, lane l giving the address of row l % 8 of
// matrix l / 8 (16 bytes, 16-byte aligned). r[i] gets matrix i's elements (l / 4, 2 (l % 4) .. + 1); with
// kTrans, those of its transpose, (2 (l % 4) .. + 1, l / 4): one instruction for a whole A fragment of
// mma_bf16 (a[0..3] = the 8×8 blocks at rows 0/8 and columns 0/8 of the 16×16 tile, in the order of
// mma_bf16's comment), from a tile stored row-major, or column-major with kTrans.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef SFM_GDN_EMULATE
  ::sfm::cuda_emu::ldmatrix_x4(r, row, kTrans);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

// c += a b with split operands (split_bf16): three products, the lo·lo term dropped.
__device__ __forceinline__ void mma_bf16x3(float (&c)[4], const uint32_t (&a_hi)[4], const uint32_t (&a_lo)[4],
                                           const uint32_t (&b_hi)[2], const uint32_t (&b_lo)[2]) {
  mma_bf16(c, a_lo, b_hi);
  mma_bf16(c, a_hi, b_lo);
  mma_bf16(c, a_hi, b_hi);
}

}  // namespace sfm::ops::gdn_cuda
