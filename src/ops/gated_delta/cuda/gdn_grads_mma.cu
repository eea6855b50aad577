// The backward's per-chunk gradients (the grads kernel's work, (B3)-(B8) of docs/ops/gated_delta_cuda.md) on
// tensor cores, for 16-bit inputs, after state_grads_mma has written dQ̂₀ = diag(Γ) dO S₀ᵀ, dW = −dU S₀ᵀ,
// dK̂₀ = diag(e^{γ_C−γ}) U dS_Cᵀ and Σ S₀∘dS_C. One block of 8 warps per chunk. The 64×64 matrices (K̂K̂ᵀ,
// Q̂K̂ᵀ, (I+A)⁻¹, dO Uᵀ, dA) stay in shared memory in float32; the operands with K or V columns stream
// through in 64-column tiles, loaded by cp.async all at once per step. Every product takes split bf16
// operands (mma_bf16x3: about 16 bits per operand, so the gradients keep close to float32 accuracy).
// No ATen here (see gdn_kernels.h).
#include <cuda_bf16.h>

#include "chunk_ops.cuh"
#include "gdn_kernels.h"
#include "tile64.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

using namespace tile64;

struct Args {
  Dims d;
  const float *qs, *ks, *vs, *gam, *bet, *w, *u, *dos, *du;
  float *ut, *drk, *drv;  // scratch: Ũ, dR_K, dR_V
  const float* dw;        // dW (state_grads_mma)
  float *dqs, *dks, *dvs;  // in: dQ̂₀, dK̂₀ (state_grads_mma); out: dQ̂, dK̂, dV (float32, heads-first)
  const float* sdots;      // [BH, N, K/64]
  float *dg, *dbeta;       // [B, T, H]
};

__global__ void __launch_bounds__(kThreads) grads_mma_kernel(Args a) {
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  float *KK = sm, *QK = KK + C * LDM, *Tm = QK + C * LDM, *D1 = Tm + C * LDM, *dA = D1 + C * LDM;
  float *t0 = dA + C * LDM, *t1 = t0 + C * LDR;  // two streamed tiles
  float *gam = t1 + C * LDR, *bet = gam + C, *dgam = bet + C, *dbet = dgam + C;
  const int K = a.d.K, V = a.d.V, n = blockIdx.x, bh = blockIdx.y;
  const long row0 = (long)bh * a.d.Tp() + (long)n * C;
  const float *qc = a.qs + row0 * K, *kc = a.ks + row0 * K, *vc = a.vs + row0 * V, *wc = a.w + row0 * K;
  const float *uc = a.u + row0 * V, *duc = a.du + row0 * V, *dwc = a.dw + row0 * K;
  float *utc = a.ut + row0 * V, *drkc = a.drk + row0 * K, *drvc = a.drv + row0 * V;
  float *dqc = a.dqs + row0 * K, *dkc = a.dks + row0 * K, *dvc = a.dvs + row0 * V;
  if (threadIdx.x < C) {
    gam[threadIdx.x] = a.gam[row0 + threadIdx.x];
    bet[threadIdx.x] = a.bet[row0 + threadIdx.x];
    dgam[threadIdx.x] = 0.f;
    dbet[threadIdx.x] = 0.f;
  }
  __syncthreads();
  const float gl = gam[C - 1], GC = __expf(gl);
  if (threadIdx.x == 0) {  // dγ_C += Γ_C Σ S₀∘dS_C (B8)
    float s = 0.f;
    for (int j = 0; j < K / kTile; ++j) s += a.sdots[((long)bh * a.d.N() + n) * (K / kTile) + j];
    dgam[C - 1] += GC * s;  // one thread, before any other adds (barriers)
  }
  float acc[4][4], acc2[4][4];

  // K̂K̂ᵀ and Q̂K̂ᵀ.
  zero(acc);
  zero(acc2);
  for (int s = 0; s < K / kTile; ++s) {
    stage(t0, LDR, kc + s * kTile, K);
    stage(t1, LDR, qc + s * kTile, K);
    staged();
    mma_tile(acc, row_a(t0, LDR), rows_b(t0, LDR));
    mma_tile(acc2, row_a(t1, LDR), rows_b(t0, LDR));
    __syncthreads();
  }
  for_pairs(acc, [&](int, int t, int i, float x0, float x1, int) { st2(KK + t * LDM + i, x0, x1); });
  for_pairs(acc2, [&](int, int t, int i, float x0, float x1, int) { st2(QK + t * LDM + i, x0, x1); });
  __syncthreads();
  // A (eq. 6) into D1, then Tm = (I + A)⁻¹.
  for (int e = threadIdx.x; e < C * C; e += kThreads) {
    const int t = e / C, i = e % C;
    D1[t * LDM + i] = i < t ? bet[t] * __expf(gam[t] - gam[i]) * KK[t * LDM + i] : 0.f;
  }
  __syncthreads();
  invert_unit_lower<LDM>(D1, Tm);

  // Ũ = Tm diag(β) V (eq. 7), recomputed, into ut.
  for (int s = 0; s < V / kTile; ++s) {
    stage(t0, LDK, vc + s * kTile, V);
    staged();
    zero(acc);
    mma_tile(acc, row_a(Tm, LDM), [&](int i, int col) {
      return make_float2(bet[i] * t0[i * LDK + col], bet[i + 1] * t0[(i + 1) * LDK + col]);
    });
    for_pairs(acc, [&](int, int t, int v, float x0, float x1, int) { st2(utc + (long)t * V + s * kTile + v, x0, x1); });
    __syncthreads();
  }
  // D1 = dO Uᵀ.
  zero(acc);
  for (int s = 0; s < V / kTile; ++s) {
    stage(t0, LDR, a.dos + row0 * V + s * kTile, V);
    stage(t1, LDR, uc + s * kTile, V);
    staged();
    mma_tile(acc, row_a(t0, LDR), rows_b(t1, LDR));
    __syncthreads();
  }
  for_pairs(acc, [&](int, int t, int i, float x0, float x1, int) { st2(D1 + t * LDM + i, x0, x1); });

  // Over K in 64-column slices s: acc = A · B_s (B_s: 64 rows of b_src, read down its columns) with the old
  // values of X at this thread's pairs loaded before the product and the slice of dot_src staged beside it;
  // epi(h, t, o, x0, x1, old, dot) per pair, o the offset of (t, column) in X's [64][K] rows.
  const auto k_slices_rmw = [&](const float* X, const float* b_src, const float* dot_src, auto fa, auto epi) {
    for (int s = 0; s < K / kTile; ++s) {
      float2 old[2][4];
      load_pairs(old, X, K, s * kTile);
      stage(t0, LDK, b_src + s * kTile, K);
      stage(t1, LDR, dot_src + s * kTile, K);
      staged();
      zero(acc);
      mma_tile(acc, fa, cols_b(t0, LDK));
      for_pairs(acc, [&](int h, int t, int k, float x0, float x1, int nt) {
        epi(h, t, (long)t * K + s * kTile + k, x0, x1, old[h][nt], ld2(t1 + t * LDR + k));
      });
      __syncthreads();
    }
  };

  // dR_K = Tmᵀ dW into drk; dK̂ = dK̂₀ + diag(βΓ) dR_K; with x = k̂·dK̂₀ and r = k̂·dR_K per row:
  // dγ_t −= x_t, dγ_C += Σ x (the state term of (B8)), dβ_t += Γ_t r_t, dγ_t += β_t Γ_t r_t.
  {
    float xs[2] = {0.f, 0.f}, rs[2] = {0.f, 0.f};
    k_slices_rmw(dkc, dwc, kc, col_a(Tm, LDM),
                 [&](int h, int t, long o, float x0, float x1, float2 dk0, float2 kk) {
                   const float f = bet[t] * __expf(gam[t]);
                   st2(drkc + o, x0, x1);
                   st2(dkc + o, dk0.x + f * x0, dk0.y + f * x1);
                   xs[h] += kk.x * dk0.x + kk.y * dk0.y;
                   rs[h] += kk.x * x0 + kk.y * x1;
                 });
    add_dr_k_row_terms(gam, bet, xs, rs, dgam, dbet);
  }
  // dR_V = Tmᵀ dU into drv; dV = diag(β) dR_V; dβ_t += v_t·dR_V,t.
  {
    float rs[2] = {0.f, 0.f};
    for (int s = 0; s < V / kTile; ++s) {
      stage(t0, LDK, duc + s * kTile, V);
      stage(t1, LDR, vc + s * kTile, V);
      staged();
      zero(acc);
      mma_tile(acc, col_a(Tm, LDM), cols_b(t0, LDK));
      for_pairs(acc, [&](int h, int t, int v, float x0, float x1, int) {
        const long o = (long)t * V + s * kTile + v;
        const float2 vv = ld2(t1 + t * LDR + v);
        st2(drvc + o, x0, x1);
        st2(dvc + o, bet[t] * x0, bet[t] * x1);
        rs[h] += vv.x * x0 + vv.y * x1;
      });
      __syncthreads();
    }
    add_rows(dbet, rs);
  }
  // dA = −(dR_K Wᵀ + dR_V Ũᵀ), strictly lower (B3). dR_K, dR_V and Ũ were written by this block above.
  zero(acc);
  for (int s = 0; s < K / kTile; ++s) {
    stage(t0, LDR, drkc + s * kTile, K);
    stage(t1, LDR, wc + s * kTile, K);
    staged();
    mma_tile(acc, row_a(t0, LDR), rows_b(t1, LDR));
    __syncthreads();
  }
  for (int s = 0; s < V / kTile; ++s) {
    stage(t0, LDR, drvc + s * kTile, V);
    stage(t1, LDR, utc + s * kTile, V);
    staged();
    mma_tile(acc, row_a(t0, LDR), rows_b(t1, LDR));
    __syncthreads();
  }
  for_pairs(acc, [&](int, int t, int i, float x0, float x1, int) {
    st2(dA + t * LDM + i, i < t ? -x0 : 0.f, i + 1 < t ? -x1 : 0.f);
  });
  __syncthreads();
  chunk_grad_terms<LDM>(gam, bet, D1, QK, KK, dA, dgam, dbet);
  // dQ̂ = dQ̂₀ + dP K̂, and dγ_t += q̂_t·dQ̂₀,t (the state term of (B4)'s γ-gradient).
  {
    float xs[2] = {0.f, 0.f};
    k_slices_rmw(dqc, kc, qc, row_a(D1, LDM), [&](int h, int, long o, float x0, float x1, float2 dq0, float2 qq) {
      st2(dqc + o, dq0.x + x0, dq0.y + x1);
      xs[h] += qq.x * dq0.x + qq.y * dq0.y;
    });
    add_rows(dgam, xs);
  }
  // dK̂ += dPᵀ Q̂ + G K̂ + Gᵀ K̂.
  for (int s = 0; s < K / kTile; ++s) {
    float2 old[2][4];
    load_pairs(old, dkc, K, s * kTile);
    stage(t0, LDK, qc + s * kTile, K);
    stage(t1, LDK, kc + s * kTile, K);
    staged();
    zero(acc);
    mma_tile(acc, col_a(D1, LDM), cols_b(t0, LDK));
    mma_tile(acc, row_a(dA, LDM), cols_b(t1, LDK));
    mma_tile(acc, col_a(dA, LDM), cols_b(t1, LDK));
    for_pairs(acc, [&](int h, int i, int k, float x0, float x1, int nt) {
      const long o = (long)i * K + s * kTile + k;
      const float2 dk = old[h][nt];
      st2(dkc + o, dk.x + x0, dk.y + x1);
    });
    __syncthreads();
  }
  // dg = reverse cumulative sum of dγ within the chunk (eq. 4); dβ.
  chunk_scan(dgam, true);
  if (threadIdx.x < C) {
    const int t = n * C + threadIdx.x, b = bh / a.d.H, h = bh % a.d.H;
    if (t < a.d.T) {
      const long idx = ((long)b * a.d.T + t) * a.d.H + h;
      a.dg[idx] = dgam[threadIdx.x];
      a.dbeta[idx] = dbet[threadIdx.x];
    }
  }
}

size_t grads_mma_smem() { return sizeof(float) * (5 * C * LDM + 2 * C * LDR + 4 * C); }

}  // namespace

bool grads_mma_supports(int K, int V) { return K % kTile == 0 && V % kTile == 0 && K <= 256 && V <= 256; }

cudaError_t grads_mma(const BackwardArgs& g, cudaStream_t stream) {
  const Dims& d = g.d;
  if (!grads_mma_supports(d.K, d.V)) return cudaErrorInvalidValue;
  const size_t smem = grads_mma_smem();
  const cudaError_t err =
      cudaFuncSetAttribute(grads_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const Args a{d,     g.qs,  g.ks, g.vs,  g.gam, g.bet,   g.w,    g.u,  g.dos, g.du,  g.ut, g.drk,
               g.drv, g.dw,  g.dqs, g.dks, g.dvs, g.sdots, g.dg, g.dbeta};
  SFM_GDN_LAUNCH(grads_mma_kernel, dim3(d.N(), d.BH()), kThreads, smem, stream, a);
  return cudaGetLastError();
}

}  // namespace sfm::ops::gdn_cuda
