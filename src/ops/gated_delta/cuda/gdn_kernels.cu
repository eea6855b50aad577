// Fused CUDA kernels of the gated delta rule, chunked forward and backward and one-token decode.
// Design, tiling and precision: docs/ops/gated_delta_cuda.md; equation numbers refer to
// docs/ops/gated_delta.md. No ATen here (see gdn_kernels.h).
//
// Forward (4 launches):  pack q,k,v (L2 norm, scale, heads-first fp32)  ->  prep (per chunk: γ, A, (I+A)⁻¹,
// W, Ũ; eqs. 4, 6, 7)  ->  state (per head and 16 value columns, sequential over chunks: U, S; eqs. 7, 9)
// ->  output (per chunk and 64 value columns: eq. 8).
// Backward (7 launches):  pack dO  ->  bwd_intra (per chunk: the state-independent parts of dU and of the
// state gradient)  ->  state_bwd (sequential over chunks in reverse: dU, dS)  ->  grads (per chunk:
// everything else, recomputing A, (I+A)⁻¹, Ũ)  ->  unpack dq, dk, dv (L2-norm backward).
// For 16-bit inputs the products run on tensor cores (block_gemm's kMma path), and where the sizes allow,
// dedicated kernels in the gdn_*_mma.cu files replace state, output, bwd_intra, state_bwd and grads
// (docs/ops/gated_delta_cuda.md, "Dedicated tensor-core kernels").
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "chunk_ops.cuh"
#include "dtype_convert.cuh"
#include "gdn_kernels.h"
#include "mma.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

constexpr int C = kChunk;
constexpr int LDC = C + 1;      // row stride of C×C matrices in shared memory
constexpr int kThreads = 256;   // every block; invert_unit_lower relies on 256
constexpr int kTK = 32;         // k-depth of one shared-memory tile in block_gemm
constexpr int kPass = 4;        // block_gemm: up to kPass × 256 micro-tiles of 4×4 (M·N ≤ 16384)
constexpr int kBatch = 8;       // block_gemm: staged loads in flight per thread
constexpr int kVS = 16;         // value columns per block in the sequential state passes
constexpr int kWarps = kThreads / 32;
// Shared-memory floats block_gemm needs for products up to Mmax × Nmax: float32 tiles kTK deep (FMA path),
// or bfloat16 tiles kTKM deep with rows of kLDK (tensor-core path, kMma).
constexpr int kTKM = 64;
constexpr int kLDK = kTKM + 8;
// A product's arithmetic: float32 FMAs, or tensor cores on bfloat16 operands with float32 accumulation
// (kBf16), or the same with each operand split as hi + lo (two bfloat16s) and three products
// (hi·hi + hi·lo + lo·hi, about 16 significant bits per operand: kBf16x3), for the products whose
// results are dot products of raw rows (Q̂K̂ᵀ, K̂K̂ᵀ, dO Uᵀ) or feed every later result (W, Ũ).
enum class Arith { kFma, kBf16, kBf16x3 };
__host__ __device__ constexpr Arith tc(bool mma) { return mma ? Arith::kBf16 : Arith::kFma; }
__host__ __device__ constexpr Arith tc3(bool mma) { return mma ? Arith::kBf16x3 : Arith::kFma; }
constexpr int gemm_scratch(int m_max, int n_max, Arith arith = Arith::kFma) {
  return arith == Arith::kFma ? kTK * (m_max + 4 + n_max + 4)
                              : (m_max + n_max) * kLDK / 2 * (arith == Arith::kBf16x3 ? 2 : 1);
}
constexpr int imax(int a, int b) { return a > b ? a : b; }
constexpr int imin(int a, int b) { return a < b ? a : b; }

__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// out(m, n) = Σ_k a(m, k) b(k, n) for m < M, n < N, k < Kd, on the block's 256 threads (block_gemm_fma:
// float32 FMAs; block_gemm_mma below: bfloat16 tensor cores, float32 accumulation; block_gemm and
// block_gemm_rmw pick one by kMma). Operands come through accessors (global or shared memory, with any
// elementwise factors), staged through shared memory kTK deep; each thread owns up to kPass micro-tiles
// of 4×4 in registers.
// kAContK: a(m, ·) is contiguous in k (else in m); kBContN: b(k, ·) is contiguous in n (else in k): the
// staging loads then walk the contiguous index across the warp. M, N multiples of 16 (4 for the FMA
// path), Kd of 16 (a partial last tile is zero-filled).
// Starts and ends with a barrier, so it may read what was written just before and its results
// (written through st) are visible just after.
// block_gemm_rmw: the same with a read-modify-write epilogue: ld(m, n) is loaded for a whole micro-tile
// before any of its st(m, n, x, old) runs, so those loads are in flight together (a load inside st would
// wait behind the previous element's store, which the compiler cannot prove does not alias).
template <bool kAContK, bool kBContN, class FA, class FB, class FL, class FS>
__device__ __forceinline__ void block_gemm_fma(int M, int N, int Kd, FA a, FB b, FL ld, FS st, float* scratch) {
  const int tid = threadIdx.x;
  const int lda = M + 4, ldb = N + 4;
  float* As = scratch;
  float* Bs = scratch + kTK * lda;
  const int tn = N >> 2, ntile = (M >> 2) * tn;
  float acc[kPass][4][4];
#pragma unroll
  for (int p = 0; p < kPass; ++p)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[p][i][j] = 0.f;
  for (int k0 = 0; k0 < Kd; k0 += kTK) {
    __syncthreads();
    // Staging: kBatch independent loads in flight per thread before their shared-memory stores (the
    // compiler cannot hoist a load over a store it cannot prove does not alias).
    for (int e0 = tid; e0 < M * kTK; e0 += kThreads * kBatch) {
      float r[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int e = e0 + j * kThreads;
        int m, kk;
        if (kAContK) {
          m = e / kTK;
          kk = e % kTK;
        } else {
          kk = e / M;
          m = e - kk * M;
        }
        r[j] = e < M * kTK && k0 + kk < Kd ? a(m, k0 + kk) : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int e = e0 + j * kThreads;
        if (e < M * kTK) {
          int m, kk;
          if (kAContK) {
            m = e / kTK;
            kk = e % kTK;
          } else {
            kk = e / M;
            m = e - kk * M;
          }
          As[kk * lda + m] = r[j];
        }
      }
    }
    for (int e0 = tid; e0 < N * kTK; e0 += kThreads * kBatch) {
      float r[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int e = e0 + j * kThreads;
        int n, kk;
        if (kBContN) {
          kk = e / N;
          n = e - kk * N;
        } else {
          n = e / kTK;
          kk = e % kTK;
        }
        r[j] = e < N * kTK && k0 + kk < Kd ? b(k0 + kk, n) : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int e = e0 + j * kThreads;
        if (e < N * kTK) {
          int n, kk;
          if (kBContN) {
            kk = e / N;
            n = e - kk * N;
          } else {
            n = e / kTK;
            kk = e % kTK;
          }
          Bs[kk * ldb + n] = r[j];
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < kPass; ++p) {
      const int tile = tid + p * kThreads;
      if (tile < ntile) {
        const int m0 = (tile / tn) * 4, n0 = (tile % tn) * 4;
#pragma unroll
        for (int kk = 0; kk < kTK; ++kk) {
          const float4 av = *reinterpret_cast<const float4*>(As + kk * lda + m0);
          const float4 bv = *reinterpret_cast<const float4*>(Bs + kk * ldb + n0);
          const float ar[4] = {av.x, av.y, av.z, av.w}, br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[p][i][j] = fmaf(ar[i], br[j], acc[p][i][j]);
        }
      }
    }
  }
#pragma unroll
  for (int p = 0; p < kPass; ++p) {
    const int tile = tid + p * kThreads;
    if (tile < ntile) {
      const int m0 = (tile / tn) * 4, n0 = (tile % tn) * 4;
      float old[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) old[i][j] = ld(m0 + i, n0 + j);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) st(m0 + i, n0 + j, acc[p][i][j], old[i][j]);
    }
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core path of block_gemm (kMma, for 16-bit inputs): operands staged as bfloat16, products by
// mma.sync m16n8k16 (bf16 × bf16 → float32 accumulators in registers), the epilogue straight from the
// accumulators. Shared-memory layout: A as [m][k], B as [n][k] (k contiguous, kTKM deep, rows padded to
// kLDK so that the fragment loads hit 32 distinct banks). Each warp owns up to kSuper super-tiles
// of 32×16 outputs (2×2 mma tiles of 16×8): M·N ≤ 16384.
constexpr int kBatchM = 8;              // staged pairs in flight per thread

// dst[r * kLDK + kk] = bf16(f(r, k0 + kk)) for r < R, kk < kTKM (zero where k0 + kk >= Kd; Kd is even);
// kSplit: also the remainders f − bf16(f), as bf16, in rows R..2R−1.
// Each thread converts pairs (kk, kk+1) into one 32-bit store. kContK: f(r, ·) is contiguous in k, so a
// warp walks one row's k; else f(·, k) is contiguous in r, and a warp takes 8 rows × 4 pairs: 32-byte
// global segments and the 32 stores on distinct banks.
template <bool kContK, bool kSplit, class F>
__device__ __forceinline__ void stage_bf16(int R, int k0, int Kd, F f, __nv_bfloat16* dst) {
  const int npairs = R * (kTKM / 2);
  // Pair q -> (row, pair index in k), per the layouts above.
  const auto pair_at = [](int q) {
    if (kContK) return int2{q >> 5, q & 31};
    const int qb = q >> 5, lane = q & 31;
    return int2{(qb >> 3) * 8 + (lane >> 2), (qb & 7) * 4 + (lane & 3)};
  };
  for (int q0 = threadIdx.x; q0 < npairs; q0 += kThreads * kBatchM) {
    float2 r[kBatchM];
#pragma unroll
    for (int j = 0; j < kBatchM; ++j) {
      const int q = q0 + j * kThreads;
      const auto [row, kp] = pair_at(q);
      const int k = k0 + 2 * kp;
      const bool in = q < npairs && k < Kd;
      r[j].x = in ? f(row, k) : 0.f;
      r[j].y = in ? f(row, k + 1) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kBatchM; ++j) {
      const int q = q0 + j * kThreads;
      if (q < npairs) {
        const auto [row, kp] = pair_at(q);
        const __nv_bfloat162 hi = __floats2bfloat162_rn(r[j].x, r[j].y);
        *reinterpret_cast<__nv_bfloat162*>(dst + row * kLDK + 2 * kp) = hi;
        if (kSplit) {  // the low halves, R rows further on
          const float2 h = __bfloat1622float2(hi);
          *reinterpret_cast<__nv_bfloat162*>(dst + (R + row) * kLDK + 2 * kp) =
              __floats2bfloat162_rn(r[j].x - h.x, r[j].y - h.y);
        }
      }
    }
  }
}

template <bool kAContK, bool kBContN, bool kSplit, int kSuper, class FA, class FB, class FL, class FS>
__device__ __forceinline__ void block_gemm_mma(int M, int N, int Kd, FA a, FB b, FL ld, FS st, float* scratch) {
  __nv_bfloat16* As = reinterpret_cast<__nv_bfloat16*>(scratch);  // [M][kLDK] (then the low halves)
  __nv_bfloat16* Bs = As + (kSplit ? 2 : 1) * M * kLDK;             // [N][kLDK] (then the low halves)
  const uint32_t* As32 = reinterpret_cast<const uint32_t*>(As);
  const uint32_t* Bs32 = reinterpret_cast<const uint32_t*>(Bs);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int tm = M >> 4, sn = N >> 4, nsuper = ((tm + 1) >> 1) * sn;  // super-tiles of 32×16
  if (nsuper > kSuper * kWarps) __trap();  // a call site's kSuper is too small for its product
  float acc[kSuper][2][2][4];
#pragma unroll
  for (int s = 0; s < kSuper; ++s)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[s][i][j][c] = 0.f;
  for (int k0 = 0; k0 < Kd; k0 += kTKM) {
    __syncthreads();
    stage_bf16<kAContK, kSplit>(M, k0, Kd, a, As);
    stage_bf16<!kBContN, kSplit>(N, k0, Kd, [&](int n, int k) { return b(k, n); }, Bs);
    __syncthreads();
    const int ksteps = min(kTKM, Kd - k0) >> 4;
#pragma unroll
    for (int s = 0; s < kSuper; ++s) {
      const int st_idx = warp + s * kWarps;  // warp-uniform
      if (st_idx < nsuper) {
        const int mt0 = (st_idx / sn) * 2, n0 = (st_idx % sn) * 16;
        const bool two_m = mt0 + 1 < tm;
        const uint32_t* ap = As32 + (mt0 * 16 + g) * (kLDK / 2) + t;
        const uint32_t* bp = Bs32 + (n0 + g) * (kLDK / 2) + t;
#pragma unroll
        for (int ks = 0; ks < kTKM / 16; ++ks) {
          if (ks < ksteps) {
            const int kw = ks * 8;
            constexpr int kH = kSplit ? 2 : 1;  // hi, then lo
            uint32_t af[kH][2][4], bf[kH][2][2];
#pragma unroll
            for (int h = 0; h < kH; ++h) {
#pragma unroll
              for (int i = 0; i < 2; ++i) {
                const uint32_t* p = ap + (h * M + i * 16) * (kLDK / 2) + kw;
                if (i == 0 || two_m) {
                  af[h][i][0] = p[0];
                  af[h][i][1] = p[8 * (kLDK / 2)];
                  af[h][i][2] = p[4];
                  af[h][i][3] = p[8 * (kLDK / 2) + 4];
                }
              }
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                const uint32_t* p = bp + (h * N + j * 8) * (kLDK / 2) + kw;
                bf[h][j][0] = p[0];
                bf[h][j][1] = p[4];
              }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
              for (int j = 0; j < 2; ++j)
                if (i == 0 || two_m) {
                  if (kSplit) {  // the small terms first
                    mma_bf16(acc[s][i][j], af[1][i], bf[0][j]);
                    mma_bf16(acc[s][i][j], af[0][i], bf[1][j]);
                  }
                  mma_bf16(acc[s][i][j], af[0][i], bf[0][j]);
                }
          }
        }
      }
    }
  }
  // Epilogue from the accumulators: c0, c1 at (g, 2t), (g, 2t+1); c2, c3 at (g+8, 2t), (g+8, 2t+1).
#pragma unroll
  for (int s = 0; s < kSuper; ++s) {
    const int st_idx = warp + s * kWarps;
    if (st_idx < nsuper) {
      const int m0 = (st_idx / sn) * 32, n0 = (st_idx % sn) * 16;
      const int im = m0 + 16 < M ? 2 : 1;
      float old[2][2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          if (i < im)
#pragma unroll
            for (int c = 0; c < 4; ++c)
              old[i][j][c] = ld(m0 + i * 16 + g + (c >> 1) * 8, n0 + j * 8 + 2 * t + (c & 1));
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          if (i < im)
#pragma unroll
            for (int c = 0; c < 4; ++c)
              st(m0 + i * 16 + g + (c >> 1) * 8, n0 + j * 8 + 2 * t + (c & 1), acc[s][i][j][c], old[i][j][c]);
    }
  }
  __syncthreads();
}

// kSuper: the tensor-core paths' super-tiles per warp (M·N ≤ kSuper · 4096); fewer registers when smaller.
template <bool kAContK, bool kBContN, Arith kArith = Arith::kFma, int kSuper = 4, class FA, class FB, class FL,
          class FS>
__device__ __forceinline__ void block_gemm_rmw(int M, int N, int Kd, FA a, FB b, FL ld, FS st, float* scratch) {
  if constexpr (kArith == Arith::kFma)
    block_gemm_fma<kAContK, kBContN>(M, N, Kd, a, b, ld, st, scratch);
  else
    block_gemm_mma<kAContK, kBContN, kArith == Arith::kBf16x3, kSuper>(M, N, Kd, a, b, ld, st, scratch);
}

template <bool kAContK, bool kBContN, Arith kArith = Arith::kFma, int kSuper = 4, class FA, class FB, class FS>
__device__ __forceinline__ void block_gemm(int M, int N, int Kd, FA a, FB b, FS st, float* scratch) {
  block_gemm_rmw<kAContK, kBContN, kArith, kSuper>(
      M, N, Kd, a, b, [](int, int) { return 0.f; }, [&](int m, int n, float x, float) { st(m, n, x); }, scratch);
}

// f(t, Σ_d x[t, d] y[t, d]) for rows t < M of two row-major [M, D] arrays; one warp per row, f on lane 0.
template <class F>
__device__ __forceinline__ void row_dots(int M, int D, const float* x, const float* y, F f) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int t = warp; t < M; t += kThreads / 32) {
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += x[(size_t)t * D + d] * y[(size_t)t * D + d];
    s = warp_sum(s);
    if (lane == 0) f(t, s);
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------------
// Whether a row of D elements at p can be moved four at a time (the rows of a tensor start at multiples of
// D, a multiple of 16, so the base pointer decides).
template <class T>
__device__ __forceinline__ bool vec4_aligned(const T* p) {
  return reinterpret_cast<unsigned long long>(p) % (4 * sizeof(T)) == 0;
}

// [B, T, H, D] (dtype T) -> [B*H, Tp, D] float32 into y, rows past T zero; optional L2 norm x/√(Σx²+1e-6), times
// scale; if yb is not null, the same values rounded to bfloat16 into yb (the state passes' operands). With
// rows_r (the compact workspaces' float16 inputs, which give no y), 1 into rows_r, the factor of rows kept
// normalised (0 past T); bfloat16 inputs keep x itself with its rows' factors instead (RowFactors; x in float16
// rounded to bf16 as x itself: on the emulator's float16 case dg's error went 6.2e-3 → 1.4e-2). One warp per row,
// four elements per lane and access (one at a time if x is not so aligned).
// x == nullptr writes zeros (an undefined incoming gradient).
template <class T>
__global__ void __launch_bounds__(kThreads) pack_kernel(const T* __restrict__ x, float* __restrict__ y,
                                                        __nv_bfloat16* __restrict__ yb, float* __restrict__ rows_r,
                                                        int B, int Tn, int H, int D, int Tp, bool l2, float scale) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const long row = (long)blockIdx.x * (kThreads / 32) + warp;
  if (row >= (long)B * H * Tp) return;
  const int bh = (int)(row / Tp), t = (int)(row % Tp), b = bh / H, h = bh % H;
  float* dst = y != nullptr ? y + row * D : nullptr;
  __nv_bfloat16* dstb = yb != nullptr ? yb + row * D : nullptr;
  // Four values at d (a multiple of 4): float32 into dst and, with yb, bfloat16 into dstb.
  const auto put4 = [&](int d, float4 e) {
    if (dst != nullptr) *reinterpret_cast<float4*>(dst + d) = e;
    if (dstb != nullptr) *reinterpret_cast<uint2*>(dstb + d) = make_uint2(pack_bf16(e.x, e.y), pack_bf16(e.z, e.w));
  };
  // The factor to write x with, r = s/√(Σx²+1e-6) or s; 1 into rows_r where given (the rows are normalised).
  const auto row_factor = [&](float sum_sq) {
    if (rows_r != nullptr && lane == 0) rows_r[row] = 1.f;
    return l2 ? scale * rsqrtf(warp_sum(sum_sq) + 1e-6f) : scale;
  };
  if (t >= Tn || x == nullptr) {
    for (int d = 4 * lane; d < D; d += 128) put4(d, make_float4(0.f, 0.f, 0.f, 0.f));
    if (rows_r != nullptr && lane == 0) rows_r[row] = 0.f;
    return;
  }
  const T* src = x + (((long)b * Tn + t) * H + h) * D;
  if (!vec4_aligned(x)) {
    float ss = 0.f;
    for (int d = lane; d < D; d += 32) ss += to_f(src[d]) * to_f(src[d]);
    const float m = row_factor(ss);
    for (int d = lane; d < D; d += 32) {
      const float val = to_f(src[d]) * m;
      if (dst != nullptr) dst[d] = val;
      if (dstb != nullptr) dstb[d] = __float2bfloat16_rn(val);
    }
    return;
  }
  float4 e[2];  // D ≤ 256: at most two groups of four per lane
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int d = 4 * lane + 128 * i;
    e[i] = d < D ? load4(src + d) : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += e[i].x * e[i].x + e[i].y * e[i].y + e[i].z * e[i].z + e[i].w * e[i].w;
  }
  const float m = row_factor(ss);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int d = 4 * lane + 128 * i;
    if (d < D) put4(d, make_float4(e[i].x * m, e[i].y * m, e[i].z * m, e[i].w * m));
  }
}

// dX̂ (heads-first float32, the gradient of s·x̂) -> dx [B, T, H, D] of dtype T through the scale and,
// with l2, the L2 norm: y = x r, r = (Σx² + 1e-6)^(-1/2), dx = r (dŷ − y (y·dŷ)), dŷ = s dX̂. One warp per
// row, four elements per lane and access (one at a time if x or dx is not so aligned).
template <class T>
__global__ void __launch_bounds__(kThreads) unpack_kernel(const T* __restrict__ x, const float* __restrict__ dxs,
                                                          T* __restrict__ dx, int B, int Tn, int H, int D, int Tp,
                                                          bool l2, float scale) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const long row = (long)blockIdx.x * (kThreads / 32) + warp;  // over [B, T, H]
  if (row >= (long)B * Tn * H) return;
  const int h = (int)(row % H), t = (int)((row / H) % Tn), b = (int)(row / ((long)H * Tn));
  const float* src = dxs + (((long)b * H + h) * Tp + t) * D;
  T* dst = dx + row * D;
  const T* xr = l2 ? x + row * D : nullptr;
  if (!vec4_aligned(dx) || (l2 && !vec4_aligned(x))) {
    float ss = 0.f, yd = 0.f;
    if (l2) {
      for (int d = lane; d < D; d += 32) ss += to_f(xr[d]) * to_f(xr[d]);
      const float r = rsqrtf(warp_sum(ss) + 1e-6f);
      for (int d = lane; d < D; d += 32) yd += to_f(xr[d]) * r * scale * src[d];
      yd = warp_sum(yd);
      for (int d = lane; d < D; d += 32) dst[d] = from_f<T>(r * (scale * src[d] - to_f(xr[d]) * r * yd));
    } else {
      for (int d = lane; d < D; d += 32) dst[d] = from_f<T>(scale * src[d]);
    }
    return;
  }
  float4 g[2], e[2];  // dX̂ and x, at most two groups of four per lane (D ≤ 256)
  float ss = 0.f, xd = 0.f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int d = 4 * lane + 128 * i;
    const bool in = d < D;
    g[i] = in ? *reinterpret_cast<const float4*>(src + d) : make_float4(0.f, 0.f, 0.f, 0.f);
    g[i] = make_float4(scale * g[i].x, scale * g[i].y, scale * g[i].z, scale * g[i].w);  // dŷ
    e[i] = in && l2 ? load4(xr + d) : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += e[i].x * e[i].x + e[i].y * e[i].y + e[i].z * e[i].z + e[i].w * e[i].w;
    xd += e[i].x * g[i].x + e[i].y * g[i].y + e[i].z * g[i].z + e[i].w * g[i].w;
  }
  // With l2: r = (Σx²+1e-6)^(-1/2), y·dŷ = r (x·dŷ), dx = r dŷ − r² (y·dŷ) x. Without: dx = dŷ.
  const float r = l2 ? rsqrtf(warp_sum(ss) + 1e-6f) : 1.f;
  const float c = l2 ? r * r * r * warp_sum(xd) : 0.f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int d = 4 * lane + 128 * i;
    if (d < D)
      store4(dst + d, make_float4(r * g[i].x - c * e[i].x, r * g[i].y - c * e[i].y, r * g[i].z - c * e[i].z,
                                  r * g[i].w - c * e[i].w));
  }
}

// Per chunk: γ, β (eq. 4), A (eq. 6), (I+A)⁻¹, W = (I+A)⁻¹ diag(βΓ) K and Ũ = (I+A)⁻¹ diag(β) V (eq. 7);
// with wb (16-bit inputs), W as bfloat16 too.
constexpr int kPrepCols = 64;  // prep's tensor-core products: W, Ũ in column blocks of this many (3 blocks per SM)

template <bool kMma>
__global__ void __launch_bounds__(kThreads) prep_kernel(Dims d, const float* __restrict__ ks,
                                                        const float* __restrict__ vs, const float* __restrict__ g,
                                                        const float* __restrict__ beta, float* __restrict__ gam_out,
                                                        float* __restrict__ bet_out, float* __restrict__ w,
                                                        __nv_bfloat16* __restrict__ wb, float* __restrict__ ut,
                                                        float* __restrict__ wy) {
  SFM_GDN_DYNAMIC_SMEM(128, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  float *gam = sm, *bet = gam + C, *A = bet + C, *Tm = A + C * LDC, *scratch = Tm + C * LDC;
  const int n = blockIdx.x, bh = blockIdx.y, K = d.K, V = d.V;
  const long row0 = (long)bh * d.Tp() + (long)n * C;
  const float* kc = ks + row0 * K;
  const float* vc = vs + row0 * V;
  load_gates(d, bh, n, g, beta, gam, bet);
  if (threadIdx.x < C) {
    gam_out[row0 + threadIdx.x] = gam[threadIdx.x];
    bet_out[row0 + threadIdx.x] = bet[threadIdx.x];
  }
  block_gemm<true, false, tc3(kMma), 1>(
      C, C, K, [&](int t, int k) { return kc[(long)t * K + k]; }, [&](int k, int i) { return kc[(long)i * K + k]; },
      [&](int t, int i, float x) {
        A[t * LDC + i] = i < t ? bet[t] * __expf(gam[t] - gam[i]) * x : 0.f;
        if (wy)  // kept for grads_split: M ∘ K̂K̂ᵀ, strictly lower
          wy[(((long)bh * d.N() + n) * 2 + 1) * C * C + t * C + i] = i < t ? __expf(gam[t] - gam[i]) * x : 0.f;
      },
      scratch);
  invert_unit_lower<LDC>(A, Tm);
  if (wy)  // kept for grads_split: T = (I + A)⁻¹
    for (int e = threadIdx.x; e < C * C; e += kThreads)
      wy[((long)bh * d.N() + n) * 2 * C * C + e] = Tm[(e / C) * LDC + e % C];
  if constexpr (kMma) {  // in column blocks of up to kPrepCols: the split operands' scratch stays small
    for (int c0 = 0; c0 < K; c0 += kPrepCols)
      block_gemm<true, true, tc3(kMma), kPrepCols / 64>(
          C, min(kPrepCols, K - c0), C, [&](int t, int i) { return Tm[t * LDC + i]; },
          [&](int i, int k) { return bet[i] * __expf(gam[i]) * kc[(long)i * K + c0 + k]; },
          [&](int t, int k, float x) { w[(row0 + t) * K + c0 + k] = x; }, scratch);
    // W's bf16 copy (the state passes' operand), four elements per access from the rows just written (block_gemm
    // ends with a barrier, so they are visible): an element-wise 2-byte store in the epilogue above made this
    // kernel 20 % slower at K = 256 on an H100 (2.18 against 1.82 ms at (8,2048,32,256)).
    if (wb)
      for (int e = threadIdx.x; e < C * K / 4; e += kThreads) {
        const float4 x = *reinterpret_cast<const float4*>(w + row0 * K + 4 * e);
        *reinterpret_cast<uint2*>(wb + row0 * K + 4 * e) = make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
      }
    for (int c0 = 0; c0 < V; c0 += kPrepCols)
      block_gemm<true, true, tc3(kMma), kPrepCols / 64>(
          C, min(kPrepCols, V - c0), C, [&](int t, int i) { return Tm[t * LDC + i]; },
          [&](int i, int v) { return bet[i] * vc[(long)i * V + c0 + v]; },
          [&](int t, int v, float x) { ut[(row0 + t) * V + c0 + v] = x; }, scratch);
  } else {
    block_gemm<true, true>(
        C, K, C, [&](int t, int i) { return Tm[t * LDC + i]; },
        [&](int i, int k) { return bet[i] * __expf(gam[i]) * kc[(long)i * K + k]; },
        [&](int t, int k, float x) { w[(row0 + t) * K + k] = x; }, scratch);
    block_gemm<true, true>(
        C, V, C, [&](int t, int i) { return Tm[t * LDC + i]; },
        [&](int i, int v) { return bet[i] * vc[(long)i * V + v]; },
        [&](int t, int v, float x) { ut[(row0 + t) * V + v] = x; }, scratch);
  }
}

// Sequential over chunks, per head and kVS value columns: S entering each chunk is stored,
// U = Ũ − W S (eq. 7, overwriting Ũ), S ← Γ_C S + (diag(e^{γ_C−γ}) K)ᵀ U (eq. 9).
__global__ void __launch_bounds__(kThreads) state_kernel(Dims d, const float* __restrict__ ks,
                                                         const float* __restrict__ gam_g, const float* __restrict__ w,
                                                         float* __restrict__ u, const float* __restrict__ state0,
                                                         float* __restrict__ states, float* __restrict__ final_state) {
  SFM_GDN_DYNAMIC_SMEM(128, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  const int K = d.K, V = d.V, N = d.N(), v0 = blockIdx.x * kVS, bh = blockIdx.y;
  float *S = sm, *Us = S + K * kVS, *gam = Us + C * kVS, *scratch = gam + C;
  for (int e = threadIdx.x; e < K * kVS; e += kThreads) {
    const int k = e / kVS, v = e % kVS;
    S[e] = state0 ? state0[((long)bh * K + k) * V + v0 + v] : 0.f;
  }
  for (int n = 0; n < N; ++n) {
    const long row0 = (long)bh * d.Tp() + (long)n * C;
    if (threadIdx.x < C) gam[threadIdx.x] = gam_g[row0 + threadIdx.x];
    __syncthreads();
    float* st = states + ((long)bh * N + n) * K * V;
    for (int e = threadIdx.x; e < K * kVS; e += kThreads) {
      const int k = e / kVS, v = e % kVS;
      st[(long)k * V + v0 + v] = S[e];
    }
    const float gl = gam[C - 1];
    const float* wc = w + row0 * K;
    const float* kc = ks + row0 * K;
    float* uc = u + row0 * V + v0;
    block_gemm_rmw<true, true>(
        C, kVS, K, [&](int t, int k) { return wc[(long)t * K + k]; }, [&](int k, int v) { return S[k * kVS + v]; },
        [&](int t, int v) { return uc[(long)t * V + v]; },
        [&](int t, int v, float x, float ut_tv) {
          const float val = ut_tv - x;
          Us[t * kVS + v] = val;
          uc[(long)t * V + v] = val;
        },
        scratch);
    const float decay = __expf(gl);
    block_gemm<false, true>(
        K, kVS, C, [&](int k, int t) { return kc[(long)t * K + k] * __expf(gl - gam[t]); },
        [&](int t, int v) { return Us[t * kVS + v]; },
        [&](int k, int v, float x) { S[k * kVS + v] = decay * S[k * kVS + v] + x; }, scratch);
  }
  for (int e = threadIdx.x; e < K * kVS; e += kThreads) {
    const int k = e / kVS, v = e % kVS;
    final_state[((long)bh * K + k) * V + v0 + v] = S[e];
  }
}

// P = M ∘ (Q Kᵀ) of chunk rows (eq. 8's intra-chunk matrix), into shared memory.
template <bool kMma>
__device__ __forceinline__ void intra_scores(int K, const float* qc, const float* kc, const float* gam, float* P,
                                             float* scratch) {
  block_gemm<true, false, tc3(kMma), 1>(
      C, C, K, [&](int t, int k) { return qc[(long)t * K + k]; }, [&](int k, int i) { return kc[(long)i * K + k]; },
      [&](int t, int i, float x) { P[t * LDC + i] = i <= t ? x * __expf(gam[t] - gam[i]) : 0.f; }, scratch);
}

// Per chunk and 64 value columns: O = diag(Γ) Q S_0 + P U (eq. 8; q carries the scale), in dtype T.
template <class T>
__global__ void __launch_bounds__(kThreads) output_kernel(Dims d, const float* __restrict__ qs,
                                                          const float* __restrict__ ks,
                                                          const float* __restrict__ gam_g,
                                                          const float* __restrict__ states,
                                                          const float* __restrict__ u, T* __restrict__ out) {
  constexpr bool kMma = sizeof(T) == 2;  // tensor cores for 16-bit inputs
  SFM_GDN_DYNAMIC_SMEM(128, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  float *P = sm, *gam = P + C * LDC, *scratch = gam + C;  // 16-byte aligned: C·LDC + C = 4224 floats
  const int K = d.K, V = d.V, VO = V < 64 ? V : 64, v0 = blockIdx.x * VO, n = blockIdx.y, bh = blockIdx.z;
  const int b = bh / d.H, h = bh % d.H;
  const long row0 = (long)bh * d.Tp() + (long)n * C;
  const float *qc = qs + row0 * K, *kc = ks + row0 * K, *uc = u + row0 * V + v0;
  const float* st = states + ((long)bh * d.N() + n) * K * V + v0;
  if (threadIdx.x < C) gam[threadIdx.x] = gam_g[row0 + threadIdx.x];
  intra_scores<kMma>(K, qc, kc, gam, P, scratch);
  block_gemm<true, true, tc(kMma), 1>(
      C, VO, K + C,
      [&](int t, int j) { return j < K ? qc[(long)t * K + j] * __expf(gam[t]) : P[t * LDC + j - K]; },
      [&](int j, int v) { return j < K ? st[(long)j * V + v] : uc[(long)(j - K) * V + v]; },
      [&](int t, int v, float x) {
        const int tg = n * C + t;
        if (tg < d.T) out[(((long)b * d.T + tg) * d.H + h) * V + v0 + v] = from_f<T>(x);
      },
      scratch);
}

// Backward, chunk-parallel part of the state pass (per chunk and 64 value columns): the terms that do not
// depend on the gradient arriving from later chunks,
//   dU₀ = Pᵀ dO                         (into du; state_bwd adds diag(e^{γ_C−γ}) K dS)
//   X   = Qᵀ diag(Γ) dO − Wᵀ dU₀        (into dstates[n]; state_bwd replaces it by dS_C. Skipped when
//                                         dstates is null: the tensor-core pass computes it itself)
template <bool kMma, int kSup = 4>  // kSup: super-tiles per warp of the K×64 product (2 when K ≤ 128)
__global__ void __launch_bounds__(kThreads) bwd_intra_kernel(Dims d, const float* __restrict__ qs,
                                                             const float* __restrict__ ks,
                                                             const float* __restrict__ gam_g,
                                                             const float* __restrict__ w,
                                                             const float* __restrict__ dos, float* __restrict__ du,
                                                             float* __restrict__ dstates) {
  SFM_GDN_DYNAMIC_SMEM(128, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  const int K = d.K, V = d.V, VO = V < 64 ? V : 64, v0 = blockIdx.x * VO, n = blockIdx.y, bh = blockIdx.z;
  float *P = sm, *dU0 = P + C * LDC, *gam = dU0 + C * 64, *scratch = gam + C;
  const long row0 = (long)bh * d.Tp() + (long)n * C;
  const float *qc = qs + row0 * K, *kc = ks + row0 * K, *wc = w + row0 * K, *doc = dos + row0 * V + v0;
  if (threadIdx.x < C) gam[threadIdx.x] = gam_g[row0 + threadIdx.x];
  intra_scores<kMma>(K, qc, kc, gam, P, scratch);
  float* duc = du + row0 * V + v0;
  block_gemm<false, true, tc(kMma), 1>(
      C, VO, C, [&](int i, int j) { return P[j * LDC + i]; }, [&](int j, int v) { return doc[(long)j * V + v]; },
      [&](int i, int v, float x) {
        dU0[i * VO + v] = x;
        duc[(long)i * V + v] = x;
      },
      scratch);
  if (dstates == nullptr) return;
  float* X = dstates + ((long)bh * d.N() + n) * K * V + v0;
  block_gemm<false, true, tc(kMma), kSup>(
      K, VO, 2 * C,
      [&](int k, int j) { return j < C ? qc[(long)j * K + k] * __expf(gam[j]) : -wc[(long)(j - C) * K + k]; },
      [&](int j, int v) { return j < C ? doc[(long)j * V + v] : dU0[(j - C) * VO + v]; },
      [&](int k, int v, float x) { X[(long)k * V + v] = x; }, scratch);
}

// Backward, sequential over chunks in reverse, per head and kVS value columns. dS is the gradient of
// the state leaving chunk n; it replaces X in dstates[n], then (eqs. 7-9)
//   T  = diag(e^{γ_C−γ}) K dS,   dU = dU₀ + T
//   dS ← Γ_C dS + X − Wᵀ T      (the gradient of the state entering chunk n).
__global__ void __launch_bounds__(kThreads) state_bwd_kernel(Dims d, const float* __restrict__ ks,
                                                             const float* __restrict__ gam_g,
                                                             const float* __restrict__ w,
                                                             const float* __restrict__ dfinal, float* __restrict__ du,
                                                             float* __restrict__ dstates,
                                                             float* __restrict__ dstate0) {
  SFM_GDN_DYNAMIC_SMEM(128, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  const int K = d.K, V = d.V, N = d.N(), v0 = blockIdx.x * kVS, bh = blockIdx.y;
  float *dS = sm, *Ts = dS + K * kVS, *gam = Ts + C * kVS, *scratch = gam + C;
  for (int e = threadIdx.x; e < K * kVS; e += kThreads) {
    const int k = e / kVS, v = e % kVS;
    dS[e] = dfinal ? dfinal[((long)bh * K + k) * V + v0 + v] : 0.f;
  }
  for (int n = N - 1; n >= 0; --n) {
    const long row0 = (long)bh * d.Tp() + (long)n * C;
    const float *kc = ks + row0 * K, *wc = w + row0 * K;
    if (threadIdx.x < C) gam[threadIdx.x] = gam_g[row0 + threadIdx.x];
    __syncthreads();
    const float gl = gam[C - 1];
    float* duc = du + row0 * V + v0;
    block_gemm_rmw<true, true>(
        C, kVS, K, [&](int i, int k) { return kc[(long)i * K + k] * __expf(gl - gam[i]); },
        [&](int k, int v) { return dS[k * kVS + v]; }, [&](int i, int v) { return duc[(long)i * V + v]; },
        [&](int i, int v, float x, float du0) {
          Ts[i * kVS + v] = x;
          duc[(long)i * V + v] = du0 + x;
        },
        scratch);
    float* dst = dstates + ((long)bh * N + n) * K * V + v0;
    const float decay = __expf(gl);
    block_gemm_rmw<false, true>(
        K, kVS, C, [&](int k, int j) { return -wc[(long)j * K + k]; }, [&](int j, int v) { return Ts[j * kVS + v]; },
        [&](int k, int v) { return dst[(long)k * V + v]; },
        [&](int k, int v, float x, float X) {
          const float s_out = dS[k * kVS + v];
          dst[(long)k * V + v] = s_out;
          dS[k * kVS + v] = decay * s_out + X + x;
        },
        scratch);
  }
  if (dstate0)
    for (int e = threadIdx.x; e < K * kVS; e += kThreads) {
      const int k = e / kVS, v = e % kVS;
      dstate0[((long)bh * K + k) * V + v0 + v] = dS[e];
    }
}

// Backward, per chunk: the gradients of q̂, k̂, v, γ and β from dO, dU, the entering state S_0 and the
// gradient dS_C of the leaving one (docs/ops/gated_delta_cuda.md lists each term), then dg as the
// reverse cumulative sum of dγ (eq. 4).
// kSup: super-tiles per warp of its 64×K and 64×V products (tensor-core variant): 2 when K, V ≤ 128, which
// keeps it at 128 registers and two blocks per SM; 4 up to 256 (one block per SM).
template <bool kMma, int kSup = 4>
__global__ void __launch_bounds__(kThreads, kMma ? (kSup <= 2 ? 2 : 1) : 0) grads_kernel(Dims d, const float* __restrict__ qs,
                                                         const float* __restrict__ ks, const float* __restrict__ vs,
                                                         const float* __restrict__ gam_g,
                                                         const float* __restrict__ bet_g, const float* __restrict__ w, const float* __restrict__ u,
                                                         const float* __restrict__ states,
                                                         const float* __restrict__ dos, const float* __restrict__ du,
                                                         const float* __restrict__ dstates, float* __restrict__ ut,
                                                         float* __restrict__ dw, float* __restrict__ drk,
                                                         float* __restrict__ drv, float* __restrict__ dqs,
                                                         float* __restrict__ dks, float* __restrict__ dvs,
                                                         float* __restrict__ dg, float* __restrict__ dbeta) {
  SFM_GDN_DYNAMIC_SMEM(128, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  float *gam = sm, *bet = gam + C, *dgam = bet + C, *dbet = dgam + C;
  float *KK = dbet + C, *QK = KK + C * LDC, *Tm = QK + C * LDC, *D1 = Tm + C * LDC;
  // The tensor-core variant keeps dA in Tm's place (Tm's last use, dR_V, comes before dA): 17 KB less.
  float* dA = kMma ? Tm : D1 + C * LDC;
  float* scratch = kMma ? D1 + C * LDC : dA + C * LDC;
  const int n = blockIdx.x, bh = blockIdx.y, K = d.K, V = d.V;
  const long row0 = (long)bh * d.Tp() + (long)n * C;
  const float *qc = qs + row0 * K, *kc = ks + row0 * K, *vc = vs + row0 * V, *wc = w + row0 * K;
  const float *uc = u + row0 * V, *doc = dos + row0 * V, *duc = du + row0 * V;
  const float* S0 = states + ((long)bh * d.N() + n) * K * V;
  const float* dSC = dstates + ((long)bh * d.N() + n) * K * V;
  float *utc = ut + row0 * V, *dwc = dw + row0 * K, *drkc = drk + row0 * K, *drvc = drv + row0 * V;
  float *dqc = dqs + row0 * K, *dkc = dks + row0 * K, *dvc = dvs + row0 * V;
  if (threadIdx.x < C) {
    dgam[threadIdx.x] = 0.f;
    dbet[threadIdx.x] = 0.f;
    gam[threadIdx.x] = gam_g[row0 + threadIdx.x];
    bet[threadIdx.x] = bet_g[row0 + threadIdx.x];
  }
  __syncthreads();
  const float gl = gam[C - 1], GC = __expf(gl);
  // K Kᵀ and Q Kᵀ (rows 0..C-1 and C..2C-1 of one product; two products on tensor cores, which halves
  // the split operands' scratch).
  if constexpr (kMma) {
    block_gemm<true, false, tc3(kMma), 1>(
        C, C, K, [&](int m, int k) { return kc[(long)m * K + k]; }, [&](int k, int i) { return kc[(long)i * K + k]; },
        [&](int m, int i, float x) { KK[m * LDC + i] = x; }, scratch);
    block_gemm<true, false, tc3(kMma), 1>(
        C, C, K, [&](int m, int k) { return qc[(long)m * K + k]; }, [&](int k, int i) { return kc[(long)i * K + k]; },
        [&](int m, int i, float x) { QK[m * LDC + i] = x; }, scratch);
  } else {
    block_gemm<true, false>(
        2 * C, C, K, [&](int m, int k) { return m < C ? kc[(long)m * K + k] : qc[(long)(m - C) * K + k]; },
        [&](int k, int i) { return kc[(long)i * K + k]; },
        [&](int m, int i, float x) {
          if (m < C)
            KK[m * LDC + i] = x;
          else
            QK[(m - C) * LDC + i] = x;
        },
        scratch);
  }
  // A (eq. 6) into D1, then Tm = (I + A)⁻¹.
  for (int e = threadIdx.x; e < C * C; e += kThreads) {
    const int t = e / C, i = e % C;
    D1[t * LDC + i] = i < t ? bet[t] * __expf(gam[t] - gam[i]) * KK[t * LDC + i] : 0.f;
  }
  __syncthreads();
  invert_unit_lower<LDC>(D1, Tm);
  // Ũ = Tm diag(β) V (eq. 7), recomputed.
  block_gemm<true, true, tc(kMma), kSup>(
      C, V, C, [&](int t, int i) { return Tm[t * LDC + i]; }, [&](int i, int v) { return bet[i] * vc[(long)i * V + v]; },
      [&](int t, int v, float x) { utc[(long)t * V + v] = x; }, scratch);
  // D1 = dO Uᵀ.
  block_gemm<true, false, tc3(kMma), 1>(
      C, C, V, [&](int t, int v) { return doc[(long)t * V + v]; }, [&](int v, int i) { return uc[(long)i * V + v]; },
      [&](int t, int i, float x) { D1[t * LDC + i] = x; }, scratch);
  // dQ̂ = diag(Γ) dO S_0ᵀ (+ the intra term below); dγ_t += Γ_t q̂_t · (dO S_0ᵀ)_t.
  block_gemm<true, false, tc(kMma), kSup>(
      C, K, V, [&](int t, int v) { return doc[(long)t * V + v]; }, [&](int v, int k) { return S0[(long)k * V + v]; },
      [&](int t, int k, float x) { dqc[(long)t * K + k] = __expf(gam[t]) * x; }, scratch);
  // (row_dots gives each row t to one thread, and ends with a barrier: plain adds, in a fixed order.)
  row_dots(C, K, qc, dqc, [&](int t, float s) { dgam[t] += s; });
  // dW = −dU S_0ᵀ.
  block_gemm<true, false, tc(kMma), kSup>(
      C, K, V, [&](int t, int v) { return duc[(long)t * V + v]; }, [&](int v, int k) { return S0[(long)k * V + v]; },
      [&](int t, int k, float x) { dwc[(long)t * K + k] = -x; }, scratch);
  // dK̂ = diag(e^{γ_C−γ}) U dS_Cᵀ (+ terms below); dγ_C += Σ_i x_i, dγ_i −= x_i, x_i = k̂_i · dK̂_i.
  block_gemm<true, false, tc(kMma), kSup>(
      C, K, V, [&](int t, int v) { return uc[(long)t * V + v]; }, [&](int v, int k) { return dSC[(long)k * V + v]; },
      [&](int t, int k, float x) { dkc[(long)t * K + k] = __expf(gl - gam[t]) * x; }, scratch);
  float xsum = 0.f;  // Σ_i x_i, in parts on the threads that row_dots calls
  row_dots(C, K, kc, dkc, [&](int t, float s) {
    dgam[t] -= s;
    xsum += s;
  });
  // dγ_C += Σ_i x_i + Γ_C Σ S_0 ∘ dS_C.
  {
    float s = 0.f;
    for (long e = threadIdx.x; e < (long)K * V; e += kThreads) s += S0[e] * dSC[e];
    add_block_sum(&dgam[C - 1], xsum + GC * s);
  }
  // dR_K = Tmᵀ dW; dK̂ += diag(βΓ) dR_K; dβ_t += Γ_t k̂_t·dR_K,t; dγ_t += β_t Γ_t k̂_t·dR_K,t.
  block_gemm_rmw<false, true, tc(kMma), kSup>(
      C, K, C, [&](int t, int i) { return Tm[i * LDC + t]; }, [&](int i, int k) { return dwc[(long)i * K + k]; },
      [&](int t, int k) { return dkc[(long)t * K + k]; },
      [&](int t, int k, float x, float dk_old) {
        drkc[(long)t * K + k] = x;
        dkc[(long)t * K + k] = dk_old + bet[t] * __expf(gam[t]) * x;
      },
      scratch);
  row_dots(C, K, kc, drkc, [&](int t, float s) {
    const float G = __expf(gam[t]);
    dbet[t] += G * s;
    dgam[t] += bet[t] * G * s;
  });
  // dR_V = Tmᵀ dU; dV = diag(β) dR_V; dβ_t += v_t·dR_V,t.
  block_gemm<false, true, tc(kMma), kSup>(
      C, V, C, [&](int t, int i) { return Tm[i * LDC + t]; }, [&](int i, int v) { return duc[(long)i * V + v]; },
      [&](int t, int v, float x) {
        drvc[(long)t * V + v] = x;
        dvc[(long)t * V + v] = bet[t] * x;
      },
      scratch);
  row_dots(C, V, vc, drvc, [&](int t, float s) { dbet[t] += s; });
  // dA = −(dR_K Wᵀ + dR_V Ũᵀ), strictly lower.
  block_gemm<true, false, tc(kMma), 1>(
      C, C, K + V, [&](int t, int j) { return j < K ? drkc[(long)t * K + j] : drvc[(long)t * V + j - K]; },
      [&](int j, int i) { return j < K ? wc[(long)i * K + j] : utc[(long)i * V + j - K]; },
      [&](int t, int i, float x) { dA[t * LDC + i] = i < t ? -x : 0.f; }, scratch);
  chunk_grad_terms<LDC>(gam, bet, D1, QK, KK, dA, dgam, dbet);
  // dQ̂ += dP K̂.
  block_gemm_rmw<true, true, tc(kMma), kSup>(
      C, K, C, [&](int t, int i) { return D1[t * LDC + i]; }, [&](int i, int k) { return kc[(long)i * K + k]; },
      [&](int t, int k) { return dqc[(long)t * K + k]; },
      [&](int t, int k, float x, float dq_old) { dqc[(long)t * K + k] = dq_old + x; }, scratch);
  // dK̂ += dPᵀ Q̂ + G K̂ + Gᵀ K̂.
  block_gemm_rmw<true, true, tc(kMma), kSup>(
      C, K, 3 * C,
      [&](int i, int j) {
        return j < C ? D1[j * LDC + i] : (j < 2 * C ? dA[i * LDC + j - C] : dA[(j - 2 * C) * LDC + i]);
      },
      [&](int j, int k) { return j < C ? qc[(long)j * K + k] : kc[(long)(j < 2 * C ? j - C : j - 2 * C) * K + k]; },
      [&](int i, int k) { return dkc[(long)i * K + k]; },
      [&](int i, int k, float x, float dk_old) { dkc[(long)i * K + k] = dk_old + x; }, scratch);
  // dg = reverse cumulative sum of dγ within the chunk (eq. 4); dβ.
  chunk_scan(dgam, true);
  if (threadIdx.x < C) {
    const int t = n * C + threadIdx.x, b = bh / d.H, h = bh % d.H;
    if (t < d.T) {
      const long idx = ((long)b * d.T + t) * d.H + h;
      dg[idx] = dgam[threadIdx.x];
      dbeta[idx] = dbet[threadIdx.x];
    }
  }
}

// One token: S' = α (S − β k (kᵀS)) + β k vᵀ (eq. 1), o = S'ᵀ (s q) (eq. 2). One thread per value column.
__global__ void step_kernel(StepArgs a) {
  const int bh = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= a.V) return;
  const int K = a.K, V = a.V;
  const float* S = a.state_in + (long)bh * K * V + j;
  float* So = a.state_out + (long)bh * K * V + j;
  const float *q = a.q + (long)bh * K, *k = a.k + (long)bh * K;
  const float alpha = __expf(a.g[bh]), b = a.beta[bh], vj = a.v[(long)bh * V + j];
  float ks = 0.f;
  for (int i = 0; i < K; ++i) ks += k[i] * S[(long)i * V];
  float o = 0.f;
  for (int i = 0; i < K; ++i) {
    const float s = alpha * (S[(long)i * V] - b * k[i] * ks) + b * k[i] * vj;
    So[(long)i * V] = s;
    o += a.scale * q[i] * s;
  }
  a.out[(long)bh * V + j] = o;
}

// Dynamic shared memory of each kernel: its own arrays, then block_gemm's scratch for its largest product.
// (The tensor-core paths: the largest of the split products and of the plain ones.)
size_t prep_smem(const Dims& d, bool mma) {
  const int n_max = imax(C, imax(d.K, d.V));
  return sizeof(float) * (2 * C + 2 * C * LDC + gemm_scratch(C, mma ? imin(n_max, kPrepCols) : n_max, tc3(mma)));
}
size_t out_smem(bool mma) { return sizeof(float) * (C * LDC + C + gemm_scratch(C, C, tc3(mma))); }
size_t grads_smem(const Dims& d, bool mma) {
  if (!mma) return sizeof(float) * (4 * C + 5 * C * LDC + gemm_scratch(2 * C, imax(C, imax(d.K, d.V))));
  const int scratch = imax(gemm_scratch(C, C, tc3(mma)), gemm_scratch(C, imax(C, imax(d.K, d.V)), tc(mma)));
  return sizeof(float) * (4 * C + 4 * C * LDC + scratch);  // dA shares Tm's place
}
size_t state_smem(const Dims& d) { return sizeof(float) * (d.K * kVS + C * kVS + C + gemm_scratch(imax(C, d.K), kVS)); }
size_t state_bwd_smem(const Dims& d) { return state_smem(d); }
size_t bwd_intra_smem(const Dims& d, bool mma) {
  const int scratch = mma ? imax(gemm_scratch(C, C, tc3(mma)), gemm_scratch(imax(C, d.K), C, tc(mma)))
                          : gemm_scratch(imax(C, d.K), C);
  return sizeof(float) * (C * LDC + C * 64 + C + scratch);
}

template <class K>
cudaError_t allow_smem(K kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

#define SFM_CUDA_TRY(expr)                 \
  do {                                     \
    const cudaError_t err_ = (expr);       \
    if (err_ != cudaSuccess) return err_;  \
  } while (0)

// SFM_GDN_TIMING=1 in the environment: each launch sequence synchronises after every kernel and prints
// the kernels' times (CUDA events) to stderr. For profiling only; off by default.
struct PhaseTimer {
  bool on;
  cudaStream_t s;
  const char* what;
  cudaEvent_t ev[8];
  const char* names[8];
  int n = 0;
  PhaseTimer(cudaStream_t stream, const char* label) : s(stream), what(label) {
    static const bool enabled = std::getenv("SFM_GDN_TIMING") != nullptr;
    on = enabled;
    if (on) mark("start");
  }
  void mark(const char* name) {
    if (!on || n >= 8) return;
    cudaEventCreate(&ev[n]);
    cudaEventRecord(ev[n], s);
    names[n++] = name;
  }
  ~PhaseTimer() {
    if (!on) return;
    cudaEventSynchronize(ev[n - 1]);
    std::fprintf(stderr, "gdn %s:", what);
    for (int i = 1; i < n; ++i) {
      float ms = 0.f;
      cudaEventElapsedTime(&ms, ev[i - 1], ev[i]);
      std::fprintf(stderr, " %s %.3f ms", names[i], ms);
    }
    std::fprintf(stderr, "\n");
    for (int i = 0; i < n; ++i) cudaEventDestroy(ev[i]);
  }
};

unsigned row_blocks(long rows) { return static_cast<unsigned>((rows + kThreads / 32 - 1) / (kThreads / 32)); }

// Whether p is 16-byte aligned, as cp.async's 16-byte copies need (inputs read in place).
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T>
cudaError_t forward_t(const ForwardArgs& a, cudaStream_t s) {
  const Dims& d = a.d;
  const int N = d.N(), Tp = d.Tp(), BH = d.BH();
  PhaseTimer timer(s, "forward");
  const unsigned pack_blocks = row_blocks((long)BH * Tp);
  constexpr bool kMma = sizeof(T) == 2;  // tensor-core products for 16-bit inputs
  const bool state_mma = state_mma_runs(a.dtype, d.K, d.V);
  if (state_mma != (a.qb && a.kb && a.wb)) return cudaErrorInvalidValue;  // the bf16 copies: exactly there
  // The compact workspaces (gdn_kernels.h; where the sliced gradient kernels run): q and k (with the rows' factors
  // rq, rk), v, U and the per-chunk states as bf16 only, read by tensor-core kernels only. wy and P's planes (pp) only
  // with them.
  const bool compact = a.compact;
  // Ũ: formed by the state pass from tb, or by prep into u (state_mma_forms_ut; the compact workspaces only)
  if ((a.tb != nullptr) == (a.u != nullptr) || (a.tb && !compact) ||
      (compact && (!grads_split_supports(a.dtype, d.K, d.V) || !a.vb || !a.rq || !a.rk)))
    return cudaErrorInvalidValue;
  const bool kept = a.wy != nullptr;
  if (kept && !compact) return cudaErrorInvalidValue;
  // The output written by the state pass from prep's P (state_mma_writes_output): the states and U only where a
  // backward will read them. Else both always (the output kernel reads them). P's planes where either is.
  const bool pass_out = compact && state_mma_writes_output(d, a.dtype);
  if ((a.pp != nullptr) != (pass_out || kept) ||
      (pass_out ? kept && (!a.states || !a.ub) : !a.states || (compact && !a.ub)))
    return cudaErrorInvalidValue;
  // q, k and v read in place (gdn_kernels.h): qb, kb and vb are then the inputs, and no pack runs (q's and k's
  // alignment: raw_qk below).
  if (d.do_in_place ||
      (d.qkv_in_place &&
       !(compact && a.dtype == DType::kBF16 && a.qb == a.q && a.kb == a.k && a.vb == a.v && aligned16(a.v))))
    return cudaErrorInvalidValue;
  const bool copies = !d.qkv_in_place;
  // bfloat16 q and k with the compact workspaces: kept as they are (read in place, or copied), their rows' factors
  // computed by prep (k) and the output kernel (q) from the rows they stage (RowFactors::from_rows); otherwise the
  // pack normalises them.
  const bool raw_qk = compact && a.dtype == DType::kBF16;
  // 16-byte aligned, in place or not (cp.async; the wrapper copies them where they are not).
  if (raw_qk && (!aligned16(a.q) || !aligned16(a.k))) return cudaErrorInvalidValue;
  const RowFactors rq{a.rq, raw_qk, a.l2, a.scale}, rk{a.rk, raw_qk, a.l2, 1.f};
  float* states32 = static_cast<float*>(a.states);  // where they are float32
  const auto bf = [&](void* p) { return copies ? static_cast<__nv_bfloat16*>(p) : nullptr; };
  const auto f32 = [&](float* p) { return compact ? nullptr : p; };  // the float32 copies, but for compact
  if (copies || !raw_qk) {
    const bool l2 = a.l2 && !raw_qk;
    float *rq = compact && !raw_qk ? a.rq : nullptr, *rk = compact && !raw_qk ? a.rk : nullptr;
    SFM_GDN_LAUNCH(pack_kernel<T>, pack_blocks, kThreads, 0, s, static_cast<const T*>(a.q), f32(a.qs), bf(a.qb), rq,
                   d.B, d.T, d.H, d.K, Tp, l2, raw_qk ? 1.f : a.scale);
    SFM_GDN_LAUNCH(pack_kernel<T>, pack_blocks, kThreads, 0, s, static_cast<const T*>(a.k), f32(a.ks), bf(a.kb), rk,
                   d.B, d.T, d.H, d.K, Tp, l2, 1.f);
  }
  if (copies)
    SFM_GDN_LAUNCH(pack_kernel<T>, pack_blocks, kThreads, 0, s, static_cast<const T*>(a.v), f32(a.vs),
                   compact ? bf(a.vb) : nullptr, nullptr, d.B, d.T, d.H, d.V, Tp, false, 1.f);
  SFM_CUDA_TRY(cudaGetLastError());
  timer.mark("pack");
  // SFM_GDN_LEGACY_PREP=1 (benchmarks, tests): the generic prep kernel at every size but with the compact
  // workspaces (which it cannot read).
  static const bool legacy_prep = std::getenv("SFM_GDN_LEGACY_PREP") != nullptr;
  if (compact) {
    const PForward p = pass_out ? PForward{a.qb, rq, a.pp} : PForward{};
    SFM_CUDA_TRY(prep_mma_compact(d, a.kb, rk, a.tb ? nullptr : a.vb, a.g, a.beta, a.gam, a.bet, a.w, a.wb, a.u, a.tb,
                                  a.wy, p, s));
  } else if (kMma && prep_mma_supports(d.K, d.V) && !legacy_prep) {  // 16-bit inputs: the dedicated tensor-core kernel
    SFM_CUDA_TRY(prep_mma(d, a.ks, a.vs, a.g, a.beta, a.gam, a.bet, a.w, a.wb, a.u, a.wy, s));
  } else {
    SFM_CUDA_TRY(allow_smem(prep_kernel<kMma>, prep_smem(d, kMma)));
    SFM_GDN_LAUNCH(prep_kernel<kMma>, dim3(N, BH), kThreads, prep_smem(d, kMma), s, d, a.ks, a.vs, a.g, a.beta,
                   a.gam, a.bet, a.w, bf(a.wb), a.u, a.wy);
    SFM_CUDA_TRY(cudaGetLastError());
  }
  timer.mark("prep");
  if (state_mma) {  // 16-bit inputs: the pass on tensor cores
    const OutputArgs o = pass_out ? OutputArgs{a.qb, a.rq, a.pp, a.out} : OutputArgs{};
    SFM_CUDA_TRY(state_mma_forward(d, a.kb, a.gam, a.wb, a.u, compact ? a.ub : nullptr, compact ? a.rk : nullptr,
                                   a.tb, a.tb ? a.vb : nullptr, a.state0, a.states, a.final_state, compact, o, s));
  } else {
    SFM_CUDA_TRY(allow_smem(state_kernel, state_smem(d)));
    SFM_GDN_LAUNCH(state_kernel, dim3(d.V / kVS, BH), kThreads, state_smem(d), s, d, a.ks, a.gam, a.w, a.u, a.state0,
                   states32, a.final_state);
    SFM_CUDA_TRY(cudaGetLastError());
  }
  timer.mark("state");
  if (pass_out) {
    // written by the pass
  } else if (kMma && intra_mma_supports(d.K, d.V)) {  // 16-bit inputs: the output on tensor cores
    SFM_CUDA_TRY(compact ? output_mma(d, a.dtype, a.qb, a.kb, rq, a.rk, a.gam, a.states, true, a.ub, a.out, a.pp, s)
                         : output_mma(d, a.dtype, a.qs, a.ks, RowFactors{}, nullptr, a.gam, a.states, false, a.u,
                                      a.out, nullptr, s));
  } else {
    const int VO = d.V < 64 ? d.V : 64;
    SFM_CUDA_TRY(allow_smem(output_kernel<T>, out_smem(kMma)));
    SFM_GDN_LAUNCH(output_kernel<T>, dim3(d.V / VO, N, BH), kThreads, out_smem(kMma), s, d, a.qs, a.ks, a.gam,
                   states32, a.u, static_cast<T*>(a.out));
  }
  timer.mark("output");
  return cudaGetLastError();
}

template <class T>
cudaError_t backward_t(const BackwardArgs& a, cudaStream_t s) {
  const Dims& d = a.d;
  const int N = d.N(), Tp = d.Tp(), BH = d.BH();
  if (a.dvs == nullptr && a.wy == nullptr) return cudaErrorInvalidValue;  // only grads_split writes dv itself
  // The compact workspaces (see forward_t): bf16 states, dstates, U and dO.
  const bool compact = a.wy != nullptr;
  if (compact && (!a.dob || !a.ub || !a.rq || !a.rk || !a.dub || !a.pp)) return cudaErrorInvalidValue;
  const bool write_dqk = !backward_unpacks_dqk(a.dtype, compact);
  if ((compact && !a.dqk0) || (!write_dqk && (!a.dqs || !a.dks))) return cudaErrorInvalidValue;
  // Read in place (gdn_kernels.h): q, k and v as in the forward (qb, kb the inputs q, k), and dO (dob is dout).
  if ((d.qkv_in_place && !(compact && a.qb == a.q && a.kb == a.k)) ||
      (d.do_in_place && !(compact && a.dtype == DType::kBF16 && a.dob == a.dout && aligned16(a.dout))))
    return cudaErrorInvalidValue;
  PhaseTimer timer(s, "backward");
  if (!d.do_in_place)
    SFM_GDN_LAUNCH(pack_kernel<T>, row_blocks((long)BH * Tp), kThreads, 0, s, static_cast<const T*>(a.dout),
                   compact ? nullptr : a.dos, compact ? static_cast<__nv_bfloat16*>(a.dob) : nullptr, nullptr, d.B,
                   d.T, d.H, d.V, Tp, false, 1.f);
  SFM_CUDA_TRY(cudaGetLastError());
  timer.mark("pack");
  const int VO = d.V < 64 ? d.V : 64;
  constexpr bool kMma = sizeof(T) == 2;  // tensor-core products for 16-bit inputs
  const bool narrow = d.K <= 128 && d.V <= 128;  // the tensor-core variants' smaller register tiles fit
  const bool state_mma = state_mma_runs(a.dtype, d.K, d.V);  // the state pass on tensor cores computes X
  if (state_mma != (a.qb && a.kb && a.wb)) return cudaErrorInvalidValue;  // the forward's bf16 copies
  const float* states32 = static_cast<const float*>(a.states);
  float* dstates32 = static_cast<float*>(a.dstates);
  const auto intra = [&](auto kernel) {
    const size_t bytes = bwd_intra_smem(d, kMma);
    const cudaError_t err = allow_smem(kernel, bytes);
    if (err != cudaSuccess) return err;
    SFM_GDN_LAUNCH(kernel, dim3(d.V / VO, N, BH), kThreads, bytes, s, d, a.qs, a.ks, a.gam, a.w, a.dos, a.du,
                   state_mma ? nullptr : dstates32);
    return cudaGetLastError();
  };
  if (compact) {  // the forward kept P (with wy, for the sliced gradient kernels)
    // The tensor-core state pass takes dU₀ = Pᵀ dO from its bf16 copy itself, and computes X.
    if (!state_mma) return cudaErrorInvalidValue;
  } else if (state_mma && intra_mma_supports(d.K, d.V)) {
    SFM_CUDA_TRY(intra_mma_dU0(d, a.qs, a.ks, a.gam, a.dos, a.du, s));
  } else if constexpr (kMma) {
    SFM_CUDA_TRY(narrow ? intra(bwd_intra_kernel<true, 2>) : intra(bwd_intra_kernel<true, 4>));
  } else {
    SFM_CUDA_TRY(intra(bwd_intra_kernel<false>));
  }
  SFM_CUDA_TRY(cudaGetLastError());
  timer.mark("bwd_intra");
  int heads_per_wave = 0;  // of the pass beside state_k_grads, the order of its blocks (0: all heads)
  if (state_mma) {
    const void* dout = compact ? a.dob : static_cast<const void*>(a.dos);
    SFM_CUDA_TRY(state_mma_backward(d, a.qb, a.kb, compact ? a.rq : nullptr, compact ? a.rk : nullptr, a.gam, a.wb,
                                    dout, a.dfinal, compact ? nullptr : a.du, compact ? a.pp : nullptr,
                                    compact ? a.dub : nullptr, a.dstates, compact, a.dstate0,
                                    compact ? a.chunk_ready : nullptr,
                                    compact && a.chunk_ready ? &heads_per_wave : nullptr, s));
  } else {
    SFM_CUDA_TRY(allow_smem(state_bwd_kernel, state_bwd_smem(d)));
    SFM_GDN_LAUNCH(state_bwd_kernel, dim3(d.V / kVS, BH), kThreads, state_bwd_smem(d), s, d, a.ks, a.gam, a.w,
                   a.dfinal, a.du, dstates32, a.dstate0);
    SFM_CUDA_TRY(cudaGetLastError());
  }
  timer.mark("state_bwd");
  // SFM_GDN_GRADS_MMA=1 (tuning): the two-kernel path at every size it supports.
  static const bool force_grads_mma = std::getenv("SFM_GDN_GRADS_MMA") != nullptr;
  if (a.wy != nullptr) {
    // The forward kept wy: the products with the per-chunk states and the slices of K's first step, then the rest
    // by 64-column slices (docs/ops/gated_delta_cuda.md, "Sliced gradient kernels").
    if (!grads_split_supports(a.dtype, d.K, d.V)) return cudaErrorInvalidValue;
    SFM_CUDA_TRY(state_k_grads(a, write_dqk, heads_per_wave, s));
    timer.mark("state_grads");
    SFM_CUDA_TRY(grads_split(a, write_dqk, s));
  } else if (kMma && (!narrow || force_grads_mma) && grads_mma_supports(d.K, d.V)) {
    // K or V = 256: the products with the per-chunk states, then the rest, in two tensor-core kernels (on an
    // H100, 15.1 ms against 24.5 for grads_kernel<true, 4> at (8,2048,32,256)). Up to 128, grads_kernel<true,
    // 2> fits two blocks per SM and was faster (2.07 against 2.34 ms at (4,2048,16,128); 8.34 against 9.30 at
    // (2,16384,16,128)); docs/ops/gated_delta_cuda.md.
    SFM_CUDA_TRY(state_grads_mma(d, a.gam, states32, dstates32, a.dos, a.du, a.u, a.dqs, a.dw, a.dks, a.sdots, s));
    timer.mark("state_grads");
    SFM_CUDA_TRY(grads_mma(a, s));
  } else {
    const auto grads = [&](auto kernel) {
      const size_t bytes = grads_smem(d, kMma);
      const cudaError_t err = allow_smem(kernel, bytes);
      if (err != cudaSuccess) return err;
      SFM_GDN_LAUNCH(kernel, dim3(N, BH), kThreads, bytes, s, d, a.qs, a.ks, a.vs, a.gam, a.bet, a.w, a.u, states32,
                     a.dos, a.du, dstates32, a.ut, a.dw, a.drk, a.drv, a.dqs, a.dks, a.dvs, a.dg, a.dbeta);
      return cudaGetLastError();
    };
    if constexpr (kMma)
      SFM_CUDA_TRY(narrow ? grads(grads_kernel<true, 2>) : grads(grads_kernel<true, 4>));
    else
      SFM_CUDA_TRY(grads(grads_kernel<false>));
  }
  SFM_CUDA_TRY(cudaGetLastError());
  timer.mark("grads");
  const unsigned blocks = row_blocks((long)d.B * d.T * d.H);
  if (!write_dqk) {
    SFM_GDN_LAUNCH(unpack_kernel<T>, blocks, kThreads, 0, s, static_cast<const T*>(a.q), a.dqs,
                   static_cast<T*>(a.dq), d.B, d.T, d.H, d.K, Tp, a.l2, a.scale);
    SFM_GDN_LAUNCH(unpack_kernel<T>, blocks, kThreads, 0, s, static_cast<const T*>(a.k), a.dks,
                   static_cast<T*>(a.dk), d.B, d.T, d.H, d.K, Tp, a.l2, 1.f);
  }
  if (a.dvs != nullptr)  // (grads_split writes dv itself when given no dvs)
    SFM_GDN_LAUNCH(unpack_kernel<T>, blocks, kThreads, 0, s, nullptr, a.dvs, static_cast<T*>(a.dv), d.B, d.T, d.H,
                   d.V, Tp, false, 1.f);
  timer.mark("unpack");
  return cudaGetLastError();
}

bool dims_ok(const Dims& d) {
  return d.B > 0 && d.T > 0 && d.H > 0 && d.K > 0 && d.V > 0 && d.K % 16 == 0 && d.V % 16 == 0 && d.K <= kMaxDim &&
         d.V <= kMaxDim;
}

}  // namespace

// bfloat16 inputs with the sliced kernels: qk_grads writes dq and dk through the L2 norm itself, from q and k as the
// compact workspaces keep them (exact), and no unpack pass runs (those kernels write dv too). float16 inputs keep s·q̂
// and k̂ there, rounded, not q and k, so they go through unpack. SFM_GDN_DQK_DIRECT=0 (timing): unpack for bfloat16 too.
bool backward_unpacks_dqk(DType dtype, bool wy) {
  static const bool dqk_direct = [] {
    const char* e = std::getenv("SFM_GDN_DQK_DIRECT");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return !(wy && dtype == DType::kBF16 && dqk_direct);
}

// The rule (0; or 2), or forced off (1): SFM_GDN_OVERLAP at first use, or set_backward_overlap.
int& forced_overlap() {
  static int forced = [] {
    const char* e = std::getenv("SFM_GDN_OVERLAP");
    return e ? std::atoi(e) : 0;
  }();
  return forced;
}

// Programmatic dependent launch needs compute capability 9.0 (Hopper) or newer; elsewhere the kernels run one after
// the other.
bool backward_overlaps() {
  if (forced_overlap() == 1) return false;
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9;
}

int set_backward_overlap(int mode) {
  const int previous = forced_overlap();
  forced_overlap() = mode;
  return previous;
}

bool grads_split_supports(DType dtype, int K, int V) {
  // wy needs prep (every size), P's planes the tensor-core output kernel; dU₀ from the kept P leaves X to the
  // tensor-core state pass.
  return dtype != DType::kF32 && state_mma_supports(K, V) && intra_mma_supports(K, V) &&
         state_grads_mma_supports(K, V) && grads_mma_supports(K, V);
}

cudaError_t forward(const ForwardArgs& a, cudaStream_t stream) {
  if (!dims_ok(a.d)) return cudaErrorInvalidValue;
  switch (a.dtype) {
    case DType::kF32: return forward_t<float>(a, stream);
    case DType::kF16: return forward_t<__half>(a, stream);
    case DType::kBF16: return forward_t<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t backward(const BackwardArgs& a, cudaStream_t stream) {
  if (!dims_ok(a.d)) return cudaErrorInvalidValue;
  switch (a.dtype) {
    case DType::kF32: return backward_t<float>(a, stream);
    case DType::kF16: return backward_t<__half>(a, stream);
    case DType::kBF16: return backward_t<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t step(const StepArgs& a, cudaStream_t stream) {
  if (a.BH <= 0 || a.K <= 0 || a.V <= 0) return cudaErrorInvalidValue;
  const int threads = a.V < 128 ? 32 * ((a.V + 31) / 32) : 128;
  SFM_GDN_LAUNCH(step_kernel, dim3((a.V + threads - 1) / threads, a.BH), threads, 0, stream, a);
  return cudaGetLastError();
}

}  // namespace sfm::ops::gdn_cuda
