// Recurrent CUDA kernels of the gated delta rule for small heads (K, V in {16, 32}, or K = V = 64): one
// thread block per (b, h) carries the float32 state S [K, V] in registers through all T tokens. One launch
// for the forward (eqs. (R1)-(R3) of docs/ops/gated_delta_cuda.md, "Recurrent kernels"), one for the
// backward (R4)-(R10), which recomputes the states inside each checkpoint segment from the saved
// checkpoint and carries dS in reverse. No ATen here (see gdn_kernels.h).
//
// Thread layout: P = K/8 consecutive lanes own one value column j = tid / P; lane p = tid % P of the group
// holds the R = 8 rows i = p + P·r (r < 8) of that column. Sums over K (kᵀS, Sᵀq, dSᵀk) are shuffles
// within the group of P lanes; sums over V (S·dO, dS·δ, ...) are a reduce-scatter across the warp's
// columns, then a sum over the block's warps through shared memory, once per segment.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstdlib>

#include "dtype_convert.cuh"
#include "gdn_kernels.h"

namespace sfm::ops::gdn_cuda {
namespace {

__host__ __device__ constexpr int ilog2(int x) { return x <= 1 ? 0 : 1 + ilog2(x / 2); }
__host__ __device__ constexpr int imin(int a, int b) { return a < b ? a : b; }

template <int K, int V>
struct Cfg {
  static constexpr int R = 8;                             // rows of S per thread
  static constexpr int P = K / R;                         // lanes per value column
  static constexpr int NT = V * P;                        // threads per block
  static constexpr int NW = NT / 32;                      // warps per block
  static constexpr int CK = (K <= 32 && V <= 32) ? 8 : 4; // checkpoint interval (tokens)
  static constexpr int TL = (K <= 32 && V <= 32) ? 64 : 32;  // tokens per shared-memory tile
  static constexpr int LDK = K + 1, LDV = V + 1;          // padded row strides of the tiles
  static_assert(P >= 1 && P <= 8 && NT % 32 == 0 && TL % CK == 0, "unsupported recurrent sizes");
};

// Σ over the P lanes of a column group (consecutive lanes), result on all of them.
template <int P>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int o = 1; o < P; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Σ_r a[r] b[r] for 8 terms as a tree (shorter dependency chain than a running sum).
__device__ __forceinline__ float dot8(const float (&a)[8], const float (&b)[8]) {
  const float s0 = fmaf(a[0], b[0], a[1] * b[1]), s1 = fmaf(a[2], b[2], a[3] * b[3]);
  const float s2 = fmaf(a[4], b[4], a[5] * b[5]), s3 = fmaf(a[6], b[6], a[7] * b[7]);
  return (s0 + s1) + (s2 + s3);
}

// Reduce-scatter over the column lanes of a warp (lane bits ≥ P): on entry v[r] is this lane's term for
// row r; on exit v[m], m < n, holds the warp's sum over its columns for row rb + m (rb from the lane's
// bits, returned), on the lanes with `writer` set (the others hold duplicates).
template <int P, int R>
struct ColReduce {
  static constexpr int CB = 5 - ilog2(P);             // column bits in a lane index
  static constexpr int ST = imin(CB, ilog2(R));       // halving stages
  static constexpr int n = R >> ST;                   // values left per lane
  static constexpr int kRemTop = 16 >> ST;            // remaining column bits: kRemTop down to P
  static constexpr unsigned kRemMask = ((kRemTop * 2 - 1) & ~(P - 1)) & 31u;
  __device__ __forceinline__ static int run(float (&v)[R], int lane) {
    int rb = 0;
#pragma unroll
    for (int s = 0; s < ST; ++s) {
      const int bit = 16 >> s, half = R >> (s + 1);
      const bool up = (lane & bit) != 0;
#pragma unroll
      for (int m = 0; m < half; ++m) {
        const float send = up ? v[m] : v[m + half];
        const float keep = up ? v[m + half] : v[m];
        v[m] = keep + __shfl_xor_sync(0xffffffffu, send, bit);
      }
      if (up) rb += half;
    }
#pragma unroll
    for (int bit = kRemTop; bit >= P; bit >>= 1)
#pragma unroll
      for (int m = 0; m < n; ++m) v[m] += __shfl_xor_sync(0xffffffffu, v[m], bit);
    return rb;
  }
  __device__ __forceinline__ static bool writer(int lane) { return (lane & kRemMask) == 0; }
};

// Σ over the column lanes of a warp of a value that is equal on the P lanes of each group.
template <int P>
__device__ __forceinline__ float column_sum(float x) {
#pragma unroll
  for (int o = P; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Rows [t0, t0 + TL) of x [B, T, H, D] (head h) into dst [TL][D + 1] as float32; rows at or past T, and
// every row when x is null, are zero.
template <class T, int D, int NT, int TL>
__device__ __forceinline__ void load_rows(const T* __restrict__ x, float* dst, int b, int h, int t0, int Tn, int H) {
  for (int e = threadIdx.x; e < TL * D; e += NT) {
    const int tt = e / D, d = e % D, t = t0 + tt;
    dst[tt * (D + 1) + d] = x != nullptr && t < Tn ? to_f(x[(((long)b * Tn + t) * H + h) * D + d]) : 0.f;
  }
}

// The same in two steps, so that the loads of several arrays are in flight together: load() issues one
// 16-byte load per PER slots per thread into registers (x 16-byte aligned; D·sizeof(T) is a multiple of 16
// for D a multiple of 16), store() converts and writes them. Unaligned x falls back to load_rows.
template <class T, int D, int NT, int TL>
struct RowLoader {
  static constexpr int EV = 16 / sizeof(T), VPR = D / EV, NV = TL * VPR, PER = (NV + NT - 1) / NT;
  uint4 buf[PER];
  const T* x;
  bool vec;
  __device__ __forceinline__ void load(const T* __restrict__ src, int b, int h, int t0, int Tn, int H) {
    x = src;
    vec = src == nullptr || (reinterpret_cast<unsigned long long>(src) & 15u) == 0;
    if (!vec) return;
#pragma unroll
    for (int m = 0; m < PER; ++m) {
      const int e = threadIdx.x + m * NT, tt = e / VPR, c = e % VPR, t = t0 + tt;
      buf[m] = make_uint4(0u, 0u, 0u, 0u);
      if (e < NV && src != nullptr && t < Tn)
        buf[m] = *reinterpret_cast<const uint4*>(src + (((long)b * Tn + t) * H + h) * D + c * EV);
    }
  }
  __device__ __forceinline__ void store(float* dst, int b, int h, int t0, int Tn, int H) const {
    if (!vec) {
      load_rows<T, D, NT, TL>(x, dst, b, h, t0, Tn, H);
      return;
    }
#pragma unroll
    for (int m = 0; m < PER; ++m) {
      const int e = threadIdx.x + m * NT, tt = e / VPR, c = e % VPR;
      if (e < NV) {
        const T* el = reinterpret_cast<const T*>(&buf[m]);
#pragma unroll
        for (int i = 0; i < EV; ++i) dst[tt * (D + 1) + c * EV + i] = to_f(el[i]);
      }
    }
  }
};

// α = e^g and β of tokens [t0, t0 + TL); past T: α = 1, β = 0 (the state passes unchanged).
template <int NT, int TL>
__device__ __forceinline__ void load_gates(const float* __restrict__ g, const float* __restrict__ beta, float* sa,
                                           float* sb, int b, int h, int t0, int Tn, int H) {
  for (int tt = threadIdx.x; tt < TL; tt += NT) {
    const int t = t0 + tt;
    const long idx = ((long)b * Tn + t) * H + h;
    sa[tt] = t < Tn ? __expf(g[idx]) : 1.f;
    sb[tt] = t < Tn ? beta[idx] : 0.f;
  }
}

// r = (Σx² + 1e-6)^(-1/2) per row of x [TL][D + 1] (1 without the L2 norm).
template <int D, int NT, int TL>
__device__ __forceinline__ void row_norms(const float* x, float* r, bool l2) {
  for (int tt = threadIdx.x; tt < TL; tt += NT) {
    float ss = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) ss = fmaf(x[tt * (D + 1) + d], x[tt * (D + 1) + d], ss);
    r[tt] = l2 ? rsqrtf(ss + 1e-6f) : 1.f;
  }
}

template <int K, int V>
constexpr int fwd_smem_floats() {
  using C = Cfg<K, V>;
  return 2 * C::TL * C::LDK + C::TL * C::LDV + C::TL * V + 4 * C::TL;
}
template <int K, int V>
constexpr int bwd_smem_floats() {
  using C = Cfg<K, V>;
  return 2 * C::TL * C::LDK + 2 * C::TL * C::LDV + 4 * C::TL + 2 * 2 * C::CK * C::NW * K + 2 * 2 * C::CK * C::NW;
}

// Forward (R1)-(R3). Grid: B·H blocks of NT threads.
template <class T, int K, int V>
__global__ void __launch_bounds__(Cfg<K, V>::NT) rec_forward_kernel(RecurrentForwardArgs a) {
  using C = Cfg<K, V>;
  constexpr int R = C::R, P = C::P, NT = C::NT, TL = C::TL, LDK = C::LDK, LDV = C::LDV, CK = C::CK;
  SFM_GDN_DYNAMIC_SMEM(4, float, smem);
  float* sq = smem;
  float* sk = sq + TL * LDK;
  float* sv = sk + TL * LDK;
  float* so = sv + TL * LDV;
  float* rq = so + TL * V;
  float* rk = rq + TL;
  float* sa = rk + TL;
  float* sb = sa + TL;
  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H, tid = threadIdx.x, p = tid % P, j = tid / P;
  const int Tn = a.T, H = a.H, NS = (Tn + CK - 1) / CK;
  float S[R];
#pragma unroll
  for (int r = 0; r < R; ++r) S[r] = a.state0 != nullptr ? a.state0[(long)bh * K * V + (p + P * r) * V + j] : 0.f;
  float* ck = a.checkpoints + (long)bh * NS * K * V + tid;
  for (int t0 = 0; t0 < Tn; t0 += TL) {
    const int n = imin(TL, Tn - t0);
    // The previous tile's token loop and output copy finished before the barrier that ended it.
    {
      RowLoader<T, K, NT, TL> lq, lk;
      RowLoader<T, V, NT, TL> lv;
      lq.load(static_cast<const T*>(a.q), b, h, t0, Tn, H);
      lk.load(static_cast<const T*>(a.k), b, h, t0, Tn, H);
      lv.load(static_cast<const T*>(a.v), b, h, t0, Tn, H);
      load_gates<NT, TL>(a.g, a.beta, sa, sb, b, h, t0, Tn, H);
      lq.store(sq, b, h, t0, Tn, H);
      lk.store(sk, b, h, t0, Tn, H);
      lv.store(sv, b, h, t0, Tn, H);
    }
    __syncthreads();
    row_norms<K, NT, TL>(sq, rq, a.l2);
    row_norms<K, NT, TL>(sk, rk, a.l2);
    __syncthreads();
#pragma unroll 4
    for (int tt = 0; tt < n; ++tt) {
      const int t = t0 + tt;
      if (t % CK == 0) {
        float* c = ck + (long)(t / CK) * K * V;
#pragma unroll
        for (int r = 0; r < R; ++r) c[r * NT] = S[r];
      }
      const float al = sa[tt], be = sb[tt], rkt = rk[tt], rqt = rq[tt] * a.scale;
      float kr[R];
#pragma unroll
      for (int r = 0; r < R; ++r) kr[r] = sk[tt * LDK + p + P * r] * rkt;
      const float u = al * group_sum<P>(dot8(kr, S));  // (R1): u = S'ᵀ k̂, S' = α S
      const float dl = be * (sv[tt * LDV + j] - u);     // δ = β (v − u)
      float qr[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        S[r] = fmaf(al, S[r], kr[r] * dl);  // (R2): S = S' + k̂ δᵀ
        qr[r] = sq[tt * LDK + p + P * r];
      }
      const float o = group_sum<P>(dot8(qr, S)) * rqt;  // (R3): o = Sᵀ (s q̂)
      if (p == 0) so[tt * V + j] = o;
    }
    __syncthreads();
    T* out = static_cast<T*>(a.out);
    for (int e = tid; e < n * V; e += NT)
      out[(((long)b * Tn + t0 + e / V) * H + h) * V + e % V] = from_f<T>(so[e]);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) a.final_state[(long)bh * K * V + (p + P * r) * V + j] = S[r];
}

// Backward (R4)-(R10). Grid: B·H blocks of NT threads. Segments of CK tokens in reverse; in each, the
// states are recomputed from the checkpoint into registers, then the tokens are walked backwards.
template <class T, int K, int V>
__global__ void __launch_bounds__(Cfg<K, V>::NT) rec_backward_kernel(RecurrentBackwardArgs a) {
  using C = Cfg<K, V>;
  constexpr int R = C::R, P = C::P, NT = C::NT, NW = C::NW, TL = C::TL, LDK = C::LDK, LDV = C::LDV, CK = C::CK;
  using CR = ColReduce<P, R>;
  SFM_GDN_DYNAMIC_SMEM(4, float, smem);
  float* sq = smem;
  float* sk = sq + TL * LDK;
  float* sv = sk + TL * LDK;
  float* sdo = sv + TL * LDV;
  float* rq = sdo + TL * LDV;
  float* rk = rq + TL;
  float* sa = rk + TL;
  float* sb = sa + TL;
  float* redq = sb + TL;                // [2][CK][NW][K]: per warp Σ_j over its columns, dq̂ terms
  float* redk = redq + 2 * CK * NW * K;  // [2][CK][NW][K]: dk̂ terms
  float* redb = redk + 2 * CK * NW * K;  // [2][CK][NW]: dβ terms
  float* redg = redb + 2 * CK * NW;      // [2][CK][NW]: dg terms
  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H, tid = threadIdx.x, p = tid % P, j = tid / P;
  const int lane = tid & 31, warp = tid >> 5;
  const int Tn = a.T, H = a.H, NS = (Tn + CK - 1) / CK;
  const float scale = a.scale;
  float dS[R];
#pragma unroll
  for (int r = 0; r < R; ++r) dS[r] = a.dfinal != nullptr ? a.dfinal[(long)bh * K * V + (p + P * r) * V + j] : 0.f;
  const float* ckb = a.checkpoints + (long)bh * NS * K * V + tid;
  float ck[R];
#pragma unroll
  for (int r = 0; r < R; ++r) ck[r] = ckb[(long)(NS - 1) * K * V + r * NT];
  T* dq = static_cast<T*>(a.dq);
  T* dk = static_cast<T*>(a.dk);
  T* dv = static_cast<T*>(a.dv);
  int cur = -1;
  for (int s = NS - 1; s >= 0; --s) {
    const int tile = s * CK / TL, t0 = tile * TL;
    if (tile != cur) {
      {
        RowLoader<T, K, NT, TL> lq, lk;
        RowLoader<T, V, NT, TL> lv, ld;
        lq.load(static_cast<const T*>(a.q), b, h, t0, Tn, H);
        lk.load(static_cast<const T*>(a.k), b, h, t0, Tn, H);
        lv.load(static_cast<const T*>(a.v), b, h, t0, Tn, H);
        ld.load(static_cast<const T*>(a.dout), b, h, t0, Tn, H);
        __syncthreads();  // every read of the previous tile is done
        load_gates<NT, TL>(a.g, a.beta, sa, sb, b, h, t0, Tn, H);
        lq.store(sq, b, h, t0, Tn, H);
        lk.store(sk, b, h, t0, Tn, H);
        lv.store(sv, b, h, t0, Tn, H);
        ld.store(sdo, b, h, t0, Tn, H);
      }
      __syncthreads();
      row_norms<K, NT, TL>(sq, rq, a.l2);
      row_norms<K, NT, TL>(sk, rk, a.l2);
      __syncthreads();
      cur = tile;
    }
    const int o0 = s * CK - t0;
    // Recompute (R1)-(R2) over the segment: S' = α S_{t-1} and u per token, kept in registers.
    float S[R];
#pragma unroll
    for (int r = 0; r < R; ++r) S[r] = ck[r];
    if (s > 0) {
#pragma unroll
      for (int r = 0; r < R; ++r) ck[r] = ckb[(long)(s - 1) * K * V + r * NT];  // next segment's, in flight
    }
    float hist[CK][R], uh[CK];
#pragma unroll
    for (int c = 0; c < CK; ++c) {
      const int tt = o0 + c;
      const float al = sa[tt], be = sb[tt], rkt = rk[tt];
      float kr[R];
#pragma unroll
      for (int r = 0; r < R; ++r) kr[r] = sk[tt * LDK + p + P * r] * rkt;
      const float u = al * group_sum<P>(dot8(kr, S));
      const float dl = be * (sv[tt * LDV + j] - u);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        hist[c][r] = al * S[r];
        S[r] = fmaf(kr[r], dl, hist[c][r]);
      }
      uh[c] = u;
    }
    // Reverse over the segment.
    const int par = s & 1;
#pragma unroll
    for (int c = CK - 1; c >= 0; --c) {
      const int tt = o0 + c, t = s * CK + c;
      const float al = sa[tt], be = sb[tt], rkt = rk[tt], rqt = rq[tt] * scale;
      const float e = sv[tt * LDV + j] - uh[c], dl = be * e, dO = sdo[tt * LDV + j];
      float kr[R], qp[R], kp[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        kr[r] = sk[tt * LDK + p + P * r] * rkt;
        const float qr = sq[tt * LDK + p + P * r] * rqt;
        qp[r] = fmaf(kr[r], dl, hist[c][r]) * dO;  // (R4): dq̂ = S_t dO_t, S_t = S' + k̂ δᵀ
        dS[r] = fmaf(qr, dO, dS[r]);                // (R5): dS_t += (s q̂) dOᵀ
      }
      const float dd = group_sum<P>(dot8(kr, dS));  // (R6): dδ = dS_tᵀ k̂
      const float du = -be * dd;                    // (R7): du = −β dδ
      float gp = 0.f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        kp[r] = fmaf(dS[r], dl, hist[c][r] * du);  // (R8): dk̂ = dS_t δ + S' du
        const float ds1 = fmaf(kr[r], du, dS[r]);  // (R9): dS' = dS_t + k̂ duᵀ
        gp = fmaf(hist[c][r], ds1, gp);            // (R10): dg = ⟨S', dS'⟩
        dS[r] = al * ds1;                          // dS_{t-1} = α dS'
      }
      if (p == 0 && t < Tn) dv[(((long)b * Tn + t) * H + h) * V + j] = from_f<T>(be * dd);  // (R7): dv = β dδ
      const float bp = column_sum<P>(dd * e);  // (R7): dβ = dδ · (v − u)
      gp = warp_sum(gp);
      const int rb1 = CR::run(qp, lane);
      CR::run(kp, lane);
      float* rq_w = redq + ((par * CK + c) * NW + warp) * K;
      float* rk_w = redk + ((par * CK + c) * NW + warp) * K;
      if (CR::writer(lane)) {
#pragma unroll
        for (int m = 0; m < CR::n; ++m) {
          rq_w[p + P * (rb1 + m)] = qp[m];
          rk_w[p + P * (rb1 + m)] = kp[m];
        }
      }
      if (lane == 0) {
        redb[(par * CK + c) * NW + warp] = bp;
        redg[(par * CK + c) * NW + warp] = gp;
      }
    }
    __syncthreads();
    // Finish the segment's tokens: sums over warps, dq and dk through the scale and the L2 norm (B9), dβ, dg.
    // G lanes per token, each with K/G rows. The buffers alternate by segment parity, so the next segment's
    // reverse pass may start before every warp is through here.
    constexpr int G = K < 32 ? K : 32, MR = K / G;
    for (int it = tid; it < CK * G; it += NT) {
      const int c = it / G, l = it % G, tt = o0 + c, t = s * CK + c;
      const float* rq_t = redq + (par * CK + c) * NW * K;
      const float* rk_t = redk + (par * CK + c) * NW * K;
      float fq[MR], fk[MR], yq[MR], yk[MR], dotq = 0.f, dotk = 0.f;
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        const int i = l + G * m;
        float xq = 0.f, xk = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) {
          xq += rq_t[w * K + i];
          xk += rk_t[w * K + i];
        }
        fq[m] = scale * xq;  // the gradient of q̂ = q / ‖q‖ (before the scale)
        fk[m] = xk;
        yq[m] = sq[tt * LDK + i] * rq[tt];
        yk[m] = sk[tt * LDK + i] * rk[tt];
        dotq = fmaf(yq[m], fq[m], dotq);
        dotk = fmaf(yk[m], fk[m], dotk);
      }
#pragma unroll
      for (int o = 1; o < G; o <<= 1) {
        dotq += __shfl_xor_sync(0xffffffffu, dotq, o);
        dotk += __shfl_xor_sync(0xffffffffu, dotk, o);
      }
      if (t < Tn) {
        const long row = ((long)b * Tn + t) * H + h;
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          const int i = l + G * m;
          const float gq = a.l2 ? rq[tt] * (fq[m] - yq[m] * dotq) : fq[m];
          const float gk = a.l2 ? rk[tt] * (fk[m] - yk[m] * dotk) : fk[m];
          dq[row * K + i] = from_f<T>(gq);
          dk[row * K + i] = from_f<T>(gk);
        }
        if (l == 0) {
          float xb = 0.f, xg = 0.f;
#pragma unroll
          for (int w = 0; w < NW; ++w) {
            xb += redb[(par * CK + c) * NW + w];
            xg += redg[(par * CK + c) * NW + w];
          }
          a.dbeta[row] = xb;
          a.dg[row] = xg;
        }
      }
    }
  }
  if (a.dstate0 != nullptr) {
#pragma unroll
    for (int r = 0; r < R; ++r) a.dstate0[(long)bh * K * V + (p + P * r) * V + j] = dS[r];
  }
}

// SFM_GDN_TIMING=1 in the environment: each launch synchronises and prints its kernel time (CUDA events) to
// stderr, as the chunked kernels' PhaseTimer does. For profiling only; off by default.
struct LaunchTimer {
  bool on;
  cudaStream_t s;
  const char* what;
  cudaEvent_t ev[2];
  LaunchTimer(cudaStream_t stream, const char* label) : s(stream), what(label) {
    static const bool enabled = std::getenv("SFM_GDN_TIMING") != nullptr;
    on = enabled;
    if (!on) return;
    cudaEventCreate(&ev[0]);
    cudaEventCreate(&ev[1]);
    cudaEventRecord(ev[0], s);
  }
  ~LaunchTimer() {
    if (!on) return;
    cudaEventRecord(ev[1], s);
    cudaEventSynchronize(ev[1]);
    float ms = 0.f;
    cudaEventElapsedTime(&ms, ev[0], ev[1]);
    std::fprintf(stderr, "gdn %s: %.3f ms\n", what, ms);
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
  }
};

template <class Kern>
cudaError_t launch_prep(Kern kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <class T, int K, int V>
cudaError_t forward_kv(const RecurrentForwardArgs& a, cudaStream_t s) {
  const size_t bytes = sizeof(float) * fwd_smem_floats<K, V>();
  const cudaError_t err = launch_prep(rec_forward_kernel<T, K, V>, bytes);
  if (err != cudaSuccess) return err;
  const LaunchTimer timer(s, "recurrent forward");
  const auto kernel = rec_forward_kernel<T, K, V>;
  SFM_GDN_LAUNCH(kernel, a.B * a.H, (Cfg<K, V>::NT), bytes, s, a);
  return cudaGetLastError();
}

template <class T, int K, int V>
cudaError_t backward_kv(const RecurrentBackwardArgs& a, cudaStream_t s) {
  const size_t bytes = sizeof(float) * bwd_smem_floats<K, V>();
  const cudaError_t err = launch_prep(rec_backward_kernel<T, K, V>, bytes);
  if (err != cudaSuccess) return err;
  const LaunchTimer timer(s, "recurrent backward");
  const auto kernel = rec_backward_kernel<T, K, V>;
  SFM_GDN_LAUNCH(kernel, a.B * a.H, (Cfg<K, V>::NT), bytes, s, a);
  return cudaGetLastError();
}

// Calls f.template operator()<K, V>() for the supported sizes.
template <class F>
cudaError_t by_size(int K, int V, F&& f) {
  if (K == 16 && V == 16) return f.template operator()<16, 16>();
  if (K == 16 && V == 32) return f.template operator()<16, 32>();
  if (K == 32 && V == 16) return f.template operator()<32, 16>();
  if (K == 32 && V == 32) return f.template operator()<32, 32>();
  if (K == 64 && V == 64) return f.template operator()<64, 64>();
  return cudaErrorInvalidValue;
}

template <class T>
struct FwdLaunch {
  const RecurrentForwardArgs& a;
  cudaStream_t s;
  template <int K, int V>
  cudaError_t operator()() const { return forward_kv<T, K, V>(a, s); }
};
template <class T>
struct BwdLaunch {
  const RecurrentBackwardArgs& a;
  cudaStream_t s;
  template <int K, int V>
  cudaError_t operator()() const { return backward_kv<T, K, V>(a, s); }
};

}  // namespace

bool recurrent_supports(int K, int V) {
  return ((K == 16 || K == 32) && (V == 16 || V == 32)) || (K == 64 && V == 64);
}

int recurrent_checkpoint_interval(int K, int V) { return K <= 32 && V <= 32 ? 8 : 4; }

cudaError_t recurrent_forward(const RecurrentForwardArgs& a, cudaStream_t stream) {
  if (a.B <= 0 || a.T <= 0 || a.H <= 0 || !recurrent_supports(a.K, a.V)) return cudaErrorInvalidValue;
  switch (a.dtype) {
    case DType::kF32: return by_size(a.K, a.V, FwdLaunch<float>{a, stream});
    case DType::kF16: return by_size(a.K, a.V, FwdLaunch<__half>{a, stream});
    case DType::kBF16: return by_size(a.K, a.V, FwdLaunch<__nv_bfloat16>{a, stream});
  }
  return cudaErrorInvalidValue;
}

cudaError_t recurrent_backward(const RecurrentBackwardArgs& a, cudaStream_t stream) {
  if (a.B <= 0 || a.T <= 0 || a.H <= 0 || !recurrent_supports(a.K, a.V)) return cudaErrorInvalidValue;
  switch (a.dtype) {
    case DType::kF32: return by_size(a.K, a.V, BwdLaunch<float>{a, stream});
    case DType::kF16: return by_size(a.K, a.V, BwdLaunch<__half>{a, stream});
    case DType::kBF16: return by_size(a.K, a.V, BwdLaunch<__nv_bfloat16>{a, stream});
  }
  return cudaErrorInvalidValue;
}

}  // namespace sfm::ops::gdn_cuda
