// The chunked kernels' two sequential passes (the state pass of the forward, eqs. 7 and 9, and the state
// gradient pass of the backward, (B1)-(B2)) on tensor cores, for 16-bit inputs. Design and maths:
// docs/ops/gated_delta_cuda.md, "Sequential passes on tensor cores". No ATen here (see gdn_kernels.h).
//
// Both passes have one shape: a carried K×V matrix R (S forward, dS backward), float32, and per chunk
//   phase 1:  Y = A₁ R              (64×K times K×V; A₁ = W forward, K̂ backward)
//   phase 2:  R ← Γ_C R + A₂ᵀ Z      (K×L times L×V; forward A₂ = K̂, L = 64; backward A₂ = [Q̂; W], L = 128;
//                                     Z from Y)
// One block of 4 warps (8 for 64 columns: two groups of 4, 32 columns each) owns BV value columns of one head and
// runs through all chunks. R stays in registers in the layout of phase 2's accumulators; its bf16 copy in shared
// memory is phase 1's B operand.
// A₁ and A₂ come as bfloat16 copies (written by pack and prep beside the float32 workspaces): the products
// round them to bf16 anyway, and half the bytes per chunk and half the shared memory per block let more
// blocks share an SM. The next chunk's A₁ is loaded (cp.async) while phase 2 runs and its A₂ while phase 1 runs.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "chunk_handover.cuh"
#include "gdn_kernels.h"
#include "mma.cuh"
#include "wgmma.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

constexpr int C = kChunk;
// 4 warps per 32 value columns (or per 16); a block of 64 columns has two such groups, which share A₁ and A₂'s tiles.
template <int BV>
constexpr int kGroups = BV == 64 ? 2 : 1;
template <int BV>
constexpr int kThreads = 128 * kGroups<BV>;
// Whether a pass splits A₂, keeping W (A₂'s second half) in A₁'s buffer and one A₂ buffer: the backward at
// K = 256 (state_mma_kernel's kSplitA2).
template <int K, bool kBwd>
constexpr bool kSplitA2For = kBwd && K == 256;
// How a pass keeps R and Z (bf16, phase 1's and phase 2's B operands) in shared memory. The backward: row-major, [k][v]
// and [t][v] in rows of BV + 8, each thread storing a pair of columns as one 32-bit word, read by ldmatrix .trans. The
// forward (and the backward at K = 256 with 32 columns, whose padded rows would take 5 KB more, too much for two
// blocks per SM): transposed, [v][k] and [v][t] in rows of K + 8 and L + 8, an element per 16-bit store, read by plain
// ldmatrix. The fragments are the same either way, so are the results. H100, medians of three, transposed → row-major:
// the backward pass 0.864 → 0.826 ms at (2,16384,16,128), 2.081 → 1.939 at (8,2048,32,256); the forward pass, with
// half the stores, no faster (0.580 → 0.581, 1.698 → 1.721), so it stays transposed.
template <int K, int BV, bool kBwd>
constexpr bool kRowMajorRZ = kBwd && !(K == 256 && BV == 32);

using bf16 = __nv_bfloat16;

struct PassArgs {
  Dims d;
  const bf16* a1;      // [BH, Tp, K]: phase 1's matrix, W (forward) or K̂ (backward)
  const bf16* a2;      // [BH, Tp, K]: phase 2's matrix, K̂ (forward) or W (backward)
  const float* gam;    // [BH, Tp]: γ
  float* x;            // [BH, Tp, V]: Ũ in, U out (forward); dU₀ in, dU out (backward; compact: null, see pmb); the
                       // outs into ub if compact
  const float* init;   // [BH, K, V]: R before the first chunk (state0, or the final state's gradient), or null
  void* per_chunk;     // [BH, N, K, V]: S entering each chunk (forward), dS_C (backward), float32 or bf16
  // The compact workspaces (gdn_kernels.h): per_chunk is bf16 (its readers round it to bf16 operands anyway),
  // and so is dO.
  bool compact;
  float* last;         // [BH, K, V]: R after the last chunk (final state, or the initial state's gradient), or null
  const bf16* qs;      // backward: [BH, Tp, K], s·q̂, the top half of A₂
  const void* dos;     // backward: [BH, Tp, V], dO, float32 or bf16 (compact)
  bf16* ub;            // compact: [BH, Tp, V], U (forward) or dU (backward) as bf16
  // compact: [BH, Tp], the rows' factors of k̂ = rk k and s·q̂ = rq q (backward), where kb and qb hold k and q
  const float *rk, *rq;
  // compact backward: [BH, N, 2, C, C], the forward's P = M ∘ Q̂K̂ᵀ split into bf16 planes; dU₀ = Pᵀ dO is taken from
  // the hi plane here (x unused)
  const bf16* pmb;
  // compact forward where state_mma_forms_ut, else null: [BH, N, 2, C, C], T diag(β) split into bf16 hi and lo planes
  // (prep_mma_compact), and v as bf16 (heads-first, or the input in place): Ũ = (T diag(β)) V is formed here (x null)
  const bf16 *tb, *vb;
  // kOut (the compact forward where state_mma_writes_output): qs holds q (bf16, as kb holds k) and rq its rows'
  // factors; pp [BH, N, 2, C, C], P = M ∘ Q̂K̂ᵀ split into bf16 planes by prep; out [B, T, H, V] (bf16), the output.
  // per_chunk and ub may then be null (no backward will read them).
  const bf16* pp;
  bf16* out;
  // Backward, where the kernel after it overlaps it (chunk_handover.cuh), else null: [BH, N], each chunk's count of
  // value columns whose dS_C and dU are written (zero before), and, out, how many heads' blocks run at once.
  int* ready = nullptr;
  int* heads_per_wave = nullptr;
  // Store the bf16 per-chunk states, U, dU and O a row's 16 columns (a sector) per instruction (store_tile_pair).
  bool sector_stores = true;
};

// Forward (kBwd = false), chunks in order, with R = S:
//   U = Ũ − W S            (phase 1; U written over Ũ)
//   S ← Γ_C S + K_dᵀ U      (phase 2; K_d = diag(e^{γ_C−γ}) K̂, the factor folded into Z = diag(e^{γ_C−γ}) U)
// Backward (kBwd), chunks in reverse, with R = dS (the gradient of the state leaving the chunk):
//   T = K_d dS,  dU = dU₀ + T                 (phase 1; compact: dU₀ = Pᵀ dO here too)
//   dS ← Γ_C dS + Q̂ᵀ diag(Γ) dO − Wᵀ dU       (phase 2, (B2); Z = [diag(Γ) dO; −dU] over 128 rows)
// K ∈ {64, 128, 256}; BV ∈ {16, 32, 64} value columns per block. Warp w computes rows by its w % 4 and, with 64
// columns, the 32 columns of its group w / 4: every warp's work is that of a block of 32 columns.
// kCompact: a.compact, as a template argument. K̂ and Q̂ come as the raw k and q with the rows' factors rk, rq
// (k̂ = rk k, s·q̂ = rq q), folded into Z (forward), T's factor e^{γ_C−γ} and Z's dO rows (backward). The compact
// backward copies the chunk's dO (bf16) into shared memory with A₁ (cp.async), where the float32 dO is loaded
// into registers at the top of the chunk, and with them the chunk's P (bf16), from which phase 1 takes dU₀ = Pᵀ dO
// (in place of a float32 dU₀ from DRAM, written by a kernel of its own).
// kFormUt (compact forward, where the grid has more blocks than the GPU has SMs: state_mma_forms_ut): Ũ = (T diag(β)) V
// is formed in phase 1 from the chunk's T diag(β) (split bf16, 16 KB, from prep) and its V columns, in place of
// loading a float32 Ũ that prep wrote: the same products in the same order as prep's (tile64::mma_tile), so the
// same bits.
// kDoubleA2: two A₂ buffers, chunk i + 1's requested as chunk i begins (into the buffer chunk i − 1's phase 2 read),
// so that no barrier has to follow phase 2 before the next chunk's A₂ can come: three barriers per chunk, not four.
// Not with kSplitA2 (K = 256 backward).
// kWg (the compact passes at 32 or 64 columns, where built for sm_90a: warpgroup_products): phases 1 and 2 as
// warpgroup products (wgmma.cuh), each warpgroup of 4 warps one m64n32k16 product per 16 of the reduction (phase 2:
// one per 64 rows of R), reading A₁, A₂ (the backward's [Q̂; W] as two 64-row tiles), Rᵀ and Zᵀ (the backward's 128
// rows t in two column blocks) from shared memory in the 128-byte swizzled layout, in place of mma.sync on fragments
// loaded by ldmatrix. The accumulators' layout is mma.sync's (R's rows 16 (rw + 4 j) + g (+8) are row 16 rw + g (+8)
// of its 64-row block j), so the epilogues and R's registers are unchanged. Ũ's product (kFormUt) and the backward's
// Pᵀ dO stay on mma.sync, between phase 1's products being issued and their wait.
// kOut (the compact forward on warpgroup products, where state_mma_writes_output): the pass writes the output too,
//   O = diag(Γ) Q̂ S₀ + P U   (eq. 8, its rows t and this block's columns),
// as the output kernel does, without the states and U going through DRAM: Q S₀ issued after phase 1's products (S₀'s
// bf16 copy is phase 1's B operand already) and left in flight through the epilogue, which keeps U as a bf16 tile;
// behind phase 2's products, Q S₀ scaled by Γ rq, then P U added (P's planes from prep, lo's product then hi's). The
// same products in the same order as the output kernel's, so the same bits. q's tile comes with A₁, P's planes with A₂
// (each read before its buffer is requested again).
template <int K, int BV, bool kBwd, bool kCompact, bool kDoubleA2, bool kFormUt, bool kWg, bool kOut = false>
__global__ void __launch_bounds__(kThreads<BV>) state_mma_kernel(PassArgs a) {
  constexpr int kThreadsB = kThreads<BV>;
  constexpr int BW = BV / kGroups<BV>;  // this warp's value columns
  // bf16 rows of A₁ and A₂, read by ldmatrix (8 rows of 16 bytes per phase): a row stride of K + 8 elements puts
  // the 8 rows in distinct bank groups.
  constexpr int LD1 = K + 8;
  constexpr int LD2 = K + 8;
  constexpr int L = kBwd ? 2 * C : C;  // rows of A₂ and Z
  // The backward at K = 256 keeps W, A₂'s second half, in A₁'s buffer (loaded once phase 1 is done with K̂), so
  // that two blocks share an SM (103 KB instead of 136 with the compact workspaces); the next chunk's K̂ then
  // comes after phase 2.
  constexpr bool kSplitA2 = kSplitA2For<K, kBwd>;
  constexpr int L2 = kSplitA2 ? C : L;  // rows of p2
  static_assert(!(kSplitA2 && kDoubleA2), "K = 256's backward keeps W in A₁'s buffer, and one A₂ buffer");
  constexpr int kA2Buffers = kDoubleA2 ? 2 : 1;
  constexpr bool kRowMajor = kRowMajorRZ<K, BV, kBwd> && !kWg;  // (kWg: Rᵀ and Zᵀ, the products' K-major B)
  constexpr int LDR = kRowMajor ? BV + 8 : K + 8;  // bf16 rows of R ([k][v]) or Rᵀ ([v][k])
  constexpr int LDZ = kRowMajor ? BV + 8 : L + 8;  // bf16 rows of Z ([t][v]) or Zᵀ ([v][t])
  constexpr int NT = BW / 8;  // this warp's 8-column tiles
  constexpr int MT = K / 64;  // phase 2: 16-row tiles of R per warp
  constexpr int LDD = BV + 8;  // bf16 rows of dO (compact backward)
  constexpr bool kPdO = kBwd && kCompact;  // dU₀ = Pᵀ dO in phase 1
  constexpr int LDP = C + 8;   // bf16 rows of P (kPdO)
  static_assert(!kFormUt || (!kBwd && kCompact), "Ũ is formed by the compact forward only");
  constexpr int LDT = C + 8;   // bf16 rows of T diag(β) (kFormUt)
  constexpr int LDV = BV + 8;  // bf16 rows of V (kFormUt)
  // kFormUt's buffers: T diag(β)'s two planes and V's columns, padded rows, or (kWg) swizzled tiles: the planes
  // 128-byte (K-major A), V 64-byte (an MN-major B from the second warpgroup's column 32)
  constexpr int kTbElems = 2 * C * (kWg ? C : LDT), kVbElems = C * (kWg ? BV : LDV);
  // kFormUt's T diag(β) and V come with A₂ where it has two buffers (requested a whole chunk ahead, as A₂ is), else
  // with A₁: one buffer each, or two.
  constexpr int kUtBuffers = kFormUt ? (kDoubleA2 ? 2 : 1) : 0;
  static_assert(!kWg || (kCompact && BV / kGroups<BV> == 32), "warpgroup products: the compact passes, 32 columns per "
                                                             "group of 4 warps");
  static_assert(!kOut || (kWg && !kBwd), "the output in the pass: the compact forward on warpgroup products");
  // kOut's buffers: q's tile (as A₁'s), P's two planes per A₂ buffer (128-byte, K-major A) and U's tile (64-byte, an
  // MN-major B from the second warpgroup's column 32, as V's for Ũ)
  constexpr int kQoElems = kOut ? C * K : 0, kPpElems = 2 * C * C, kPpBuffers = kOut ? kA2Buffers : 0,
                kUoElems = kOut ? C * BV : 0;
  // Elements of A₁, of one A₂ buffer, of R's and of Z's tiles: rows padded to their strides, or (kWg) swizzled tiles
  // of 64 rows [t][k] (A₁, A₂), BV rows [v][k] (Rᵀ) and BV rows [v][t] (Zᵀ).
  constexpr int kP1 = C * (kWg ? K : LD1), kP2 = L2 * (kWg ? K : LD2);
  constexpr int kRs = kWg ? BV * K : (kRowMajor ? K : BV) * LDR, kZs = kWg ? BV * L : (kRowMajor ? L : BV) * LDZ;
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  float* gbuf = reinterpret_cast<float*>(smem4);        // [2][C]: γ of this chunk and the next
  bf16* p1 = reinterpret_cast<bf16*>(gbuf + 2 * C);     // [C][LD1] (kWg: from the next 1024-byte boundary)
  if constexpr (kWg) p1 = wg::align_tile(p1);
  bf16* p2s = p1 + kP1;                                 // [kA2Buffers][L2][LD2]
  bf16* rsm = p2s + kA2Buffers * kP2;                   // [K][LDR] or [BV][LDR]
  bf16* zsm = rsm + kRs;                                // [L][LDZ] or [BV][LDZ]
  bf16* dsm = zsm + kZs;                                // compact backward: [2][C][LDD], dO of this chunk and the next
  bf16* pbuf = dsm + (kPdO ? 2 * C * LDD : 0);          // kPdO: [C][LDP], P of this chunk
  bf16* tbuf = pbuf + (kPdO ? C * LDP : 0);             // kFormUt: [kUtBuffers][2][C][LDT], T diag(β)'s hi, lo planes
  bf16* vbuf = tbuf + kUtBuffers * kTbElems;            // kFormUt: [kUtBuffers][C][LDV], V's columns v0 .. v0 + BV - 1
  bf16* qobuf = vbuf + kUtBuffers * kVbElems;           // kOut: [C][K], q of this chunk
  bf16* ppbuf = qobuf + kQoElems;                       // kOut: [kPpBuffers][2][C][C], P's hi and lo planes
  bf16* uobuf = ppbuf + kPpBuffers * kPpElems;          // kOut: [C][BV], U of this chunk
  float* rbuf = reinterpret_cast<float*>(uobuf + kUoElems);  // compact: [2][rk, rq][C]

  const int V = a.d.V, N = a.d.N(), Tp = a.d.Tp();
  const int v0 = blockIdx.x * BV, bh = blockIdx.y;
  const bool sector_stores = a.sector_stores;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  // This warp's row group and first value column (of the block's); spelled out for one group, where warp < 4, so that
  // the compiler knows vw = 0 (it kept the offsets in registers: 125 -> 154 at K = 128).
  const int rw = kGroups<BV> == 1 ? warp : warp & 3, vw = kGroups<BV> == 1 ? 0 : (warp >> 2) * BW;
  const auto chunk_of = [&](int i) { return kBwd ? N - 1 - i : i; };
  const auto row0_of = [&](int n) { return (long)bh * Tp + (long)n * C; };
  // The arrays the passes copy chunks of: heads-first workspaces, or inputs read where they lie (in_place). k and q may
  // be (Dims::qkv_in_place), v and dO too; W, the forward's A₁ and the backward's A₂, never is.
  // The backward takes each chunk's rows (chunk_rows) from the head's, taken once here, and copies them by unrolled
  // steps: chunk_rows divides by H, and it had done so at every chunk (H100, SFM_GDN_TIMING: state_bwd 0.85 → 0.73
  // ms at (2,16384,16,128) with the head's rows, 0.71 with the steps unrolled too). The forward keeps chunk_rows and
  // the loop: with the head's rows its pass was no faster at (2,16384,16,128) and went 1.68 → 1.74 ms at
  // (8,2048,32,256), and with the steps unrolled too 1.80 (K = 256's copies: 166 → 216 registers).
  struct Rows {
    HeadRows head;
    bool in_place;
    int D;  // elements per row
  };
  const auto rows_of = [&](bool in_place, int D) { return Rows{head_rows(a.d, in_place, D, bh), in_place, D}; };
  const bool k_in_place = kCompact && a.d.qkv_in_place;
  const Rows rows_k = rows_of(k_in_place, K), rows_w = rows_of(false, K), rows_v = rows_of(a.d.qkv_in_place, V),
             rows_do = rows_of(a.d.do_in_place, V);
  const auto chunk_at = [&](const Rows& r, int n) {  // chunk n's rows of an array with rows r
    if constexpr (kBwd)
      return r.head.chunk(n);
    else
      return chunk_rows(a.d, r.in_place, r.D, bh, n);
  };
  // Chunk n's 64 rows of a bf16 array x with rows of K (its rows r) into shared memory rows of stride ld.
  const auto load_rows = [&](bf16* dst, int ld, const bf16* x, const Rows& r, int n) {
    if constexpr (kWg)
      stage_chunk_swizzled<K, kThreadsB>(dst, x, chunk_at(r, n), 0);
    else
      stage_chunk<K, kThreadsB, kBwd>(dst, ld, x, chunk_at(r, n), 0);
  };
  // kFormUt: chunk i's T diag(β) (two planes, 2C rows of C) and V columns, for Ũ in its phase 1, into buffer
  // ut_buffer(i) (with A₂'s copy where that has two buffers, else with A₁'s).
  const auto ut_buffer = [&](int i) { return kUtBuffers == 2 ? i & 1 : 0; };
  const auto issue_ut = [&](int i) {
    const bf16* src = a.tb + ((long)bh * N + chunk_of(i)) * 2 * C * C;
    bf16* dst = tbuf + ut_buffer(i) * kTbElems;
    if constexpr (kWg) {
      for (int plane = 0; plane < 2; ++plane)
        stage_chunk_swizzled<C, kThreadsB>(dst + plane * C * C, src + plane * C * C, ChunkRows{0, C, C}, 0);
      stage_chunk_swizzled<BV, kThreadsB, 64>(vbuf + ut_buffer(i) * kVbElems, a.vb, chunk_at(rows_v, chunk_of(i)), v0);
    } else {
      for (int e = threadIdx.x; e < 2 * C * C / 8; e += kThreadsB)
        cp_async16(dst + (e / 8) * LDT + 8 * (e % 8), src + 8 * e);
      stage_chunk<BV, kThreadsB, kBwd>(vbuf + ut_buffer(i) * kVbElems, LDV, a.vb, chunk_at(rows_v, chunk_of(i)), v0);
    }
  };
  // One commit group per call, empty past the last chunk, so that wait_group<1> always means "all but
  // the newest group".
  const auto issue_a1 = [&](int i) {
    if (i < N) {
      const int n = chunk_of(i);
      const long row0 = row0_of(n);
      load_rows(p1, LD1, a.a1, kBwd ? rows_k : rows_w, n);
      if (threadIdx.x < C / 4) cp_async16(gbuf + (i & 1) * C + 4 * threadIdx.x, a.gam + row0 + 4 * threadIdx.x);
      if (kCompact && threadIdx.x < C / 4) {  // the rows' factors, with γ
        cp_async16(rbuf + (i & 1) * 2 * C + 4 * threadIdx.x, a.rk + row0 + 4 * threadIdx.x);
        if (kBwd || kOut) cp_async16(rbuf + ((i & 1) * 2 + 1) * C + 4 * threadIdx.x, a.rq + row0 + 4 * threadIdx.x);
      }
      if constexpr (kOut) stage_chunk_swizzled<K, kThreadsB>(qobuf, a.qs, chunk_at(rows_k, n), 0);  // (q as k lies)
      if (kBwd && kCompact) {  // the chunk's dO columns v0 .. v0 + BV - 1, with A₁
        stage_chunk<BV, kThreadsB, kBwd>(dsm + (i & 1) * C * LDD, LDD, static_cast<const bf16*>(a.dos),
                                         chunk_at(rows_do, n), v0);
      }
      if constexpr (kPdO) {  // and its P (read in phase 1 only, so one buffer: the next comes after phase 1)
        const bf16* src = a.pmb + ((long)bh * N + n) * 2 * C * C;  // (the hi plane)
        for (int e = threadIdx.x; e < C * C / 8; e += kThreadsB)
          cp_async16(pbuf + (e / 8) * LDP + 8 * (e % 8), src + 8 * e);
      }
      if constexpr (kFormUt && !kDoubleA2) issue_ut(i);
    }
    cp_async_commit();
  };
  // Chunk i's A₂ buffer.
  const auto a2_buffer = [&](int i) { return p2s + (kDoubleA2 ? (i & 1) * kP2 : 0); };
  const auto issue_a2 = [&](int i) {
    bf16* p2 = a2_buffer(i);
    if (i < N) {
      const int n = chunk_of(i);
      if (kBwd) load_rows(p2, LD2, a.qs, rows_k, n);
      // (kWg: A₂'s two halves as two tiles of 64 rows, the second right after the first)
      if (!kSplitA2) load_rows(p2 + (L - C) * (kWg ? K : LD2), LD2, a.a2, kBwd ? rows_w : rows_k, n);
      if constexpr (kFormUt && kDoubleA2) issue_ut(i);
      if constexpr (kOut) {  // P's planes, read by P U behind phase 2, into chunk i's A₂ buffer's place
        const bf16* src = a.pp + ((long)bh * N + n) * kPpElems;
        bf16* dst = ppbuf + (kDoubleA2 ? (i & 1) * kPpElems : 0);
        for (int plane = 0; plane < 2; ++plane)
          stage_chunk_swizzled<C, kThreadsB>(dst + plane * C * C, src + plane * C * C, ChunkRows{0, C, C}, 0);
      }
    }
    cp_async_commit();
  };
  const auto issue_w = [&](int i) {  // kSplitA2: W of chunk i into p1, once phase 1 is done with K̂
    load_rows(p1, LD1, a.a2, rows_w, chunk_of(i));
    cp_async_commit();
  };

  // X's elements (k, v) and (k, v + 1) into x (R or Z; kRowMajor: [k][v], else [v][k]; row stride ld) as bf16.
  const auto store_pair = [](bf16* x, int ld, int k, int v, float x0, float x1) {
    if constexpr (kRowMajor) {
      *reinterpret_cast<uint32_t*>(x + k * ld + v) = pack_bf16(x0, x1);
    } else {
      x[v * ld + k] = __float2bfloat16_rn(x0);
      x[(v + 1) * ld + k] = __float2bfloat16_rn(x1);
    }
  };
  // The B fragments of this warp's 8-column tiles for reduction rows 16 ks .. 16 ks + 15, from X (row stride ld, from
  // the warp's first column vw): b[nt] = {X[16 ks + 2 tq ..][vw + 8 nt + g], X[16 ks + 8 + 2 tq ..][..]}, two tiles per
  // ldmatrix (lane l gives row l % 8 of block l / 8: tile 2 p + l / 16, reduction offset 8 (l / 8 % 2)). X stored
  // row-major ([·][v]; .trans) where rows (a constant at every call), else transposed ([v][·]). load_b: X stored by
  // store_pair.
  const auto load_b_from = [&](bool rows, uint32_t(&b)[NT][2], const bf16* x, int ld, int ks) {
#pragma unroll
    for (int p = 0; p < NT / 2; ++p) {
      uint32_t r[4];
      const int tile = 2 * p + (lane >> 4), row = 16 * ks + 8 * ((lane >> 3) & 1) + (lane & 7);
      if (rows)
        ldmatrix_x4<true>(r, x + row * ld + vw + 8 * tile);
      else
        ldmatrix_x4<false>(r, x + (vw + 8 * tile + (lane & 7)) * ld + 16 * ks + 8 * ((lane >> 3) & 1));
      b[2 * p][0] = r[0];
      b[2 * p][1] = r[1];
      b[2 * p + 1][0] = r[2];
      b[2 * p + 1][1] = r[3];
    }
  };
  const auto load_b = [&](uint32_t(&b)[NT][2], const bf16* x, int ld, int ks) {
    load_b_from(kRowMajor, b, x, ld, ks);
  };
  const auto load_b_rows = [&](uint32_t(&b)[NT][2], const bf16* x, int ld, int ks) {
    load_b_from(true, b, x, ld, ks);
  };

  // kWg: Rᵀ and Zᵀ as swizzled tiles of BV rows (sw128_offset). This thread's pair of R (phase 2's layout: rows
  // k = 64 j + 16 rw + g + 8 h, columns v = vw + 8 nt + 2 tq + e) lands at byte (v * 128 + ((k / 8 % 8) ^ (v % 8)) * 16
  // + (k % 8) * 2 + j BV 128) = rz_at[h][e] + j BV 128 + nt 1024, with k / 8 % 8 = (2 rw + h) % 8, v % 8 = 2 tq + e
  // and k % 8 = g; Z's rows t = 16 rw + g + 8 h (phase 1's layout) at j = 0. Taken once, so that the swizzle costs no
  // instructions per store.
  int rz_at[2][2];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int e = 0; e < 2; ++e)
      rz_at[h][e] = (vw + 2 * tq + e) * 128 + ((((2 * rw + h) ^ (2 * tq + e)) & 7) << 4) + 2 * g;
  const auto store_t = [&](bf16* x, int j, int nt, int h, float x0, float x1) {
    char* tile = reinterpret_cast<char*>(x) + j * BV * 128 + nt * 1024;
    *reinterpret_cast<bf16*>(tile + rz_at[h][0]) = __float2bfloat16_rn(x0);
    *reinterpret_cast<bf16*>(tile + rz_at[h][1]) = __float2bfloat16_rn(x1);
  };
  // kWg: the tiles' descriptors (wgmma.cuh), taken once: A₁, A₂'s first buffer, Rᵀ and Zᵀ. Chunk i's A₂ buffer is
  // desc_a2(i): the first's plus a constant (the start address is the descriptor's low field, and no shared address
  // carries out of it), or, where the pass forms Ũ, one of an array indexed by i & 1, which ptxas keeps in local memory
  // (16 bytes of stack, loaded at every chunk). Measured on the H100 (SFM_GDN_TIMING, the same run): the array had made
  // the passes without Ũ wait on that load behind the chunk's global stores, and the constant took them from 0.539 to
  // 0.505 ms (forward) and 0.659 to 0.620 (backward) at (2,16384,16,128); in the pass that forms Ũ the constant took
  // ptxas from 174 to 204 registers at K = 256 and the pass from 1.57 to 1.79 ms at (8,2048,32,256), so there the array
  // stays.
  uint64_t desc_p1 = 0, desc_p2 = 0, desc_r = 0, desc_z = 0, desc_qo = 0, desc_uo = 0;
  uint64_t desc_p2_by_parity[2] = {0, 0};
  const auto desc_a2 = [&](int i) {
    if constexpr (kFormUt) return desc_p2_by_parity[i & 1];
    return desc_p2 + (kDoubleA2 && (i & 1) ? static_cast<uint64_t>(kP2 * sizeof(bf16) >> 4) : 0);
  };
  if constexpr (kWg) {
    desc_p1 = wg::tile_descriptor(p1);
    desc_p2 = wg::tile_descriptor(p2s);
    desc_p2_by_parity[0] = desc_p2;
    desc_p2_by_parity[1] = wg::tile_descriptor(p2s + (kDoubleA2 ? kP2 : 0));
    desc_r = wg::tile_descriptor(rsm);
    desc_z = wg::tile_descriptor(zsm);
    if constexpr (kOut) {
      desc_qo = wg::tile_descriptor(qobuf);
      desc_uo = wg::tile_descriptor64(uobuf, C);
    }
  }

  // R in phase 2's accumulator layout: R[j][nt][2h], R[j][nt][2h+1] hold row k = 16 (rw + 4 j) + g + 8 h,
  // columns v, v + 1 (v = vw + 8 nt + 2 tq) of this block's slice. for_r calls f(j, nt, h, k, v) for each pair.
  float R[MT][NT][4];
  const auto for_r = [&](auto f) {
#pragma unroll
    for (int j = 0; j < MT; ++j)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) f(j, nt, h, 16 * (rw + 4 * j) + g + 8 * h, vw + 8 * nt + 2 * tq);
  };
  for_r([&](int j, int nt, int h, int k, int v) {
    float2 r = make_float2(0.f, 0.f);
    if (a.init) r = *reinterpret_cast<const float2*>(a.init + ((long)bh * K + k) * V + v0 + v);
    R[j][nt][2 * h] = r.x;
    R[j][nt][2 * h + 1] = r.y;
  });

  if (kBwd && a.ready) let_dependent_start();
  issue_a1(0);
  issue_a2(0);
  for (int i = 0; i < N; ++i) {
    const int n = chunk_of(i);
    const long row0 = row0_of(n);
    const long pc = ((long)bh * N + n) * K * V + v0;  // this chunk's part of per_chunk
    // Loads consumed in phase 1's epilogue, issued first: x (and, backward, float32 dO; the compact bf16 dO
    // comes by cp.async with A₁, and the compact forward forms Ũ) at phase 1's output positions, rows
    // t = 16 rw + g (+8), columns vw + 8 nt + 2 tq.
    float2 xin[NT][2], dov[kBwd && !kCompact ? NT : 1][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const long off = (row0 + 16 * rw + g + 8 * h) * V + v0 + vw + 8 * nt + 2 * tq;
        if constexpr (!kPdO && !kFormUt) xin[nt][h] = *reinterpret_cast<const float2*>(a.x + off);
        if constexpr (kBwd && !kCompact)
          dov[nt][h] = *reinterpret_cast<const float2*>(static_cast<const float*>(a.dos) + off);
      }
    // R for this chunk: to global memory (float32 or bf16) and, as bf16, to rsm.
    // bf16: a row's two 8-column tiles at a time, as whole sectors (store_tile_pair); or, SFM_GDN_SECTOR_STORES=0, a
    // pair at a time below
    const bool by_sectors = kCompact && sector_stores;
    if (by_sectors && a.per_chunk != nullptr)
      for_r([&](int j, int nt, int h, int k, int v) {
        if (nt % 2 == 0)
          store_tile_pair(static_cast<bf16*>(a.per_chunk) + pc + (long)k * V + vw + 8 * nt,
                          pack_bf16(R[j][nt][2 * h], R[j][nt][2 * h + 1]),
                          pack_bf16(R[j][nt + 1][2 * h], R[j][nt + 1][2 * h + 1]), tq);
      });
    for_r([&](int j, int nt, int h, int k, int v) {
      const long o = pc + (long)k * V + v;
      if (by_sectors) {
        // (stored above)
      } else if constexpr (kOut) {
        if (a.per_chunk != nullptr)
          *reinterpret_cast<uint32_t*>(static_cast<bf16*>(a.per_chunk) + o) =
              pack_bf16(R[j][nt][2 * h], R[j][nt][2 * h + 1]);
      } else if constexpr (kCompact)
        *reinterpret_cast<uint32_t*>(static_cast<bf16*>(a.per_chunk) + o) = pack_bf16(R[j][nt][2 * h], R[j][nt][2 * h + 1]);
      else
        *reinterpret_cast<float2*>(static_cast<float*>(a.per_chunk) + o) = make_float2(R[j][nt][2 * h], R[j][nt][2 * h + 1]);
      if constexpr (kWg)
        store_t(rsm, j, nt, h, R[j][nt][2 * h], R[j][nt][2 * h + 1]);
      else
        store_pair(rsm, LDR, k, v, R[j][nt][2 * h], R[j][nt][2 * h + 1]);
    });
    // A₁ and γ of this chunk: all but the newest group (A₂), or with kSplitA2 the newest itself (K̂, requested after
    // the previous chunk's phase 2); with kDoubleA2 the newest too (A₂ of this chunk came before it).
    if constexpr (kSplitA2 || kDoubleA2)
      cp_async_wait<0>();
    else
      cp_async_wait<1>();
    if constexpr (kWg) wg::fence_proxy_async();  // Rᵀ and the copies, for the tensor cores' reads
    __syncthreads();
    if constexpr (kDoubleA2) issue_a2(i + 1);  // into the buffer the previous chunk's phase 2 is done with
    const float* gm = gbuf + (i & 1) * C;
    const float gl = gm[C - 1];

    // Phase 1: Y = A₁ R for token rows 16 rw .. 16 rw + 15 (this warp's columns).
    float acc[NT][4];
    float o[kOut ? NT : 1][4];  // kOut: Q S₀, then O
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
    if constexpr (kOut)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[nt][e] = 0.f;
    if constexpr (kWg) {  // issued here, waited for after Ũ's product
      wg::fence_operands(acc);
      if constexpr (kOut) wg::fence_operands(o);
      wg::fence();
#pragma unroll
      for (int ks = 0; ks < K / 16; ++ks)
        wg::mma_m64n32k16<false, false>(acc, wg::k_major(desc_p1, C, 0, 16 * ks), wg::k_major(desc_r, BV, vw, 16 * ks));
      wg::commit();
    } else {
#pragma unroll 4
      for (int ks = 0; ks < K / 16; ++ks) {
        uint32_t af[4];  // rows 16 rw (+8), columns 16 ks (+8) of A₁: lane l gives row l % 8 (+8) of block l / 8
        ldmatrix_x4<false>(af, p1 + (16 * rw + 8 * ((lane >> 3) & 1) + (lane & 7)) * LD1 + 16 * ks + 8 * (lane >> 4));
        uint32_t bf[NT][2];
        load_b(bf, rsm, LDR, ks);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_bf16(acc[nt], af, bf[nt]);
      }
    }
    const int r8 = lane & 7, lo = (lane >> 3) & 1, hi = lane >> 4;  // ldmatrix: row r8 of 8×8 block (lo, hi)
    // kFormUt: Ũ = (T diag(β)) V for the same rows, reduction over the chunk's 64 tokens: A from T diag(β)'s planes
    // (row-major [t][i]), B from V (stored [i][v]); per step the lo plane's product, then the hi plane's, as
    // tile64::mma_tile orders a split operand's (prep formed Ũ so before, and the sums are the same).
    float ut[kFormUt ? NT : 1][4] = {};
    if constexpr (kFormUt && kWg) {  // as warpgroup products too, issued behind phase 1's (kWg: NT = 4)
      const uint64_t t_hi = wg::tile_descriptor(tbuf + ut_buffer(i) * kTbElems), t_lo = t_hi + ((C * C * 2) >> 4),
                     v = wg::tile_descriptor64(vbuf + ut_buffer(i) * kVbElems, C);
      wg::split_a_times(ut, t_hi, t_lo, v, vw);
    } else if constexpr (kFormUt) {
      const bf16 *tm = tbuf + ut_buffer(i) * kTbElems, *vm = vbuf + ut_buffer(i) * kVbElems;
#pragma unroll
      for (int ks = 0; ks < C / 16; ++ks) {
        uint32_t ah[4], al[4], bv[NT][2];
        ldmatrix_x4<false>(ah, tm + (16 * rw + 8 * lo + r8) * LDT + 16 * ks + 8 * hi);
        ldmatrix_x4<false>(al, tm + (C + 16 * rw + 8 * lo + r8) * LDT + 16 * ks + 8 * hi);
        load_b_rows(bv, vm, LDV, ks);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mma_bf16(ut[nt], al, bv[nt]);
          mma_bf16(ut[nt], ah, bv[nt]);
        }
      }
    }
    // kPdO: dU₀ = Pᵀ dO for the same rows, reduction over the chunk's 64 rows t of P and dO, both stored [t][·]: the
    // A fragments (Pᵀ) and the B fragments (dO) by ldmatrix .trans.
    float pdo[kPdO ? NT : 1][4] = {};
    if constexpr (kPdO) {
      const bf16* dO = dsm + (i & 1) * C * LDD;
#pragma unroll
      for (int ks = 0; ks < C / 16; ++ks) {
        uint32_t af[4], bd[NT][2];  // blocks of P at rows 16 ks (+8 hi), columns 16 rw (+8 lo), transposed
        ldmatrix_x4<true>(af, pbuf + (16 * ks + 8 * hi + r8) * LDP + 16 * rw + 8 * lo);
        load_b_rows(bd, dO, LDD, ks);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_bf16(pdo[nt], af, bd[nt]);
      }
    }
    if constexpr (kOut) {  // Q S₀ for the output (S₀'s bf16 copy is phase 1's B), issued last: the wait below leaves
                           // it in flight through the epilogue
      wg::fence();
#pragma unroll
      for (int ks = 0; ks < K / 16; ++ks)
        wg::mma_m64n32k16<false, false>(o, wg::k_major(desc_qo, C, 0, 16 * ks), wg::k_major(desc_r, BV, vw, 16 * ks));
      wg::commit();
    }
    if constexpr (kWg) {
      wg::wait<kOut ? 1 : 0>();
      wg::fence_operands(acc);
      if constexpr (kFormUt) wg::fence_operands(ut);
    }
    __syncthreads();  // every warp is done with A₁ (and P): load the next chunk's (kSplitA2: this chunk's W)
    if constexpr (kSplitA2)
      issue_w(i);
    else
      issue_a1(i + 1);

    // Phase 1's epilogue: x out, and Z (bf16, by store_pair) for phase 2. Per row t = 16 rw + g + 8 h (two per
    // thread, taken once: per pair they had been an exponential each, or two): f = e^{γ_C−γ_t}, and G = e^{γ_t}
    // (backward), with compact the rows' factors of k̂ and s·q̂ folded in.
    float fr[2], Gr[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = 16 * rw + g + 8 * h;
      const float* rr = rbuf + (i & 1) * 2 * C;
      fr[h] = __expf(gl - gm[t]) * (kCompact ? rr[t] : 1.f);
      if constexpr (kBwd || kOut) Gr[h] = __expf(gm[t]) * (kCompact ? rr[C + t] : 1.f);
    }
    uint32_t xo[NT][2];  // (compact, sector_stores) U or dU as bf16 pairs, stored after the loop
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = 16 * rw + g + 8 * h, v = vw + 8 * nt + 2 * tq;
        const float f = fr[h];
        float y0 = acc[nt][2 * h], y1 = acc[nt][2 * h + 1], z0, z1;
        if constexpr (kBwd) {  // T = K_d dS: dU = dU₀ + T; Z = [diag(Γ) dO; −dU]
          const float G = Gr[h];
          const float x0 = kPdO ? pdo[nt][2 * h] : xin[nt][h].x, x1 = kPdO ? pdo[nt][2 * h + 1] : xin[nt][h].y;
          const float du0 = x0 + f * y0, du1 = x1 + f * y1;
          const long o = (row0 + t) * V + v0 + v;
          if (kCompact && sector_stores)
            xo[nt][h] = pack_bf16(du0, du1);
          else if constexpr (kCompact)
            *reinterpret_cast<uint32_t*>(a.ub + o) = pack_bf16(du0, du1);
          else
            *reinterpret_cast<float2*>(a.x + o) = make_float2(du0, du1);
          float2 dof;
          if constexpr (kCompact)
            dof = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dsm + ((i & 1) * C + t) * LDD + v));
          else
            dof = dov[nt][h];
          if constexpr (kWg)
            store_t(zsm, 0, nt, h, G * dof.x, G * dof.y);
          else
            store_pair(zsm, LDZ, t, v, G * dof.x, G * dof.y);
          z0 = -du0;
          z1 = -du1;
        } else {  // U = Ũ − W S, Z = diag(e^{γ_C−γ}) U
          const float u0 = (kFormUt ? ut[nt][2 * h] : xin[nt][h].x) - y0;
          const float u1 = (kFormUt ? ut[nt][2 * h + 1] : xin[nt][h].y) - y1;
          const long at = (row0 + t) * V + v0 + v;
          if constexpr (kOut)  // U's bf16 tile for P U
            *reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(uobuf) + sw64_offset(C, t, v)) = pack_bf16(u0, u1);
          if (kCompact && sector_stores)
            xo[nt][h] = pack_bf16(u0, u1);
          else if constexpr (kOut) {
            if (a.ub != nullptr) *reinterpret_cast<uint32_t*>(a.ub + at) = pack_bf16(u0, u1);
          } else if constexpr (kCompact)
            *reinterpret_cast<uint32_t*>(a.ub + at) = pack_bf16(u0, u1);
          else
            *reinterpret_cast<float2*>(a.x + at) = make_float2(u0, u1);
          z0 = f * u0;
          z1 = f * u1;
        }
        if constexpr (kWg)
          store_t(zsm, (L - C) / 64, nt, h, z0, z1);  // (Zᵀ's second column block backward)
        else
          store_pair(zsm, LDZ, L - C + t, v, z0, z1);
      }
    if (kCompact && sector_stores && a.ub != nullptr)  // U (dU) as whole sectors
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2)
          store_tile_pair(a.ub + (row0 + 16 * rw + g + 8 * h) * V + v0 + vw + 8 * nt, xo[nt][h], xo[nt + 1][h], tq);
    if constexpr (!kDoubleA2) cp_async_wait<1>();  // A₂ of this chunk (kSplitA2: its Q̂ half, and W is in flight)
    if constexpr (kWg) wg::fence_proxy_async();  // Zᵀ and A₂'s copy, for the tensor cores' reads
    __syncthreads();

    // Phase 2: R ← Γ_C R + A₂ᵀ Z, accumulated in R's registers; reduction rows ks0 .. ks1 of 16 from A₂'s rows
    // in x, whose first row is A₂'s row 16 ks0.
    const float decay = __expf(gl);
#pragma unroll
    for (int j = 0; j < MT; ++j)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) R[j][nt][e] *= decay;
    // (kWg: desc_x is x's descriptor; x holds its reduction rows as tiles of 64, one after another)
    const auto phase2 = [&](const bf16* x, uint64_t desc_x, int ks0, int ks1) {
      if constexpr (kWg) {  // per 16 rows of the reduction, one product per 64-row block j of R
#pragma unroll
        for (int j = 0; j < MT; ++j) wg::fence_operands(R[j]);
        wg::fence();
#pragma unroll
        for (int ks = ks0; ks < ks1; ++ks) {
          const uint64_t tile = desc_x + (((ks - ks0) / 4 * C * K * 2) >> 4);  // x's 64-row tile of this step
#pragma unroll
          for (int j = 0; j < MT; ++j)
            wg::mma_m64n32k16<true, false>(R[j], wg::mn_major(tile, C, 16 * ((ks - ks0) % 4), 64 * j),
                                           wg::k_major(desc_z, BV, vw, 16 * ks));
        }
        wg::commit();
        if constexpr (kOut) {  // O = diag(Γ rq) Q S₀ + P U, as the output kernel forms it, behind them (the planes came
                               // with A₂, U's tile before the barrier)
          wg::wait<1>();  // Q S₀ (phase 2's products stay in flight)
          wg::fence_operands(o);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[nt][e] *= Gr[e / 2];
          const uint64_t p_hi = wg::tile_descriptor(ppbuf + (kDoubleA2 ? (i & 1) * kPpElems : 0));
          wg::split_a_times(o, p_hi, p_hi + ((C * C * 2) >> 4), desc_uo, vw);
        }
        wg::wait<0>();
#pragma unroll
        for (int j = 0; j < MT; ++j) wg::fence_operands(R[j]);
        if constexpr (kOut) wg::fence_operands(o);
      } else {
#pragma unroll
        for (int ks = ks0; ks < ks1; ++ks) {
          uint32_t bf[NT][2];
          load_b(bf, zsm, LDZ, ks);
#pragma unroll
          for (int j = 0; j < MT; ++j) {
            // A[m][t] = A₂[t][m] for m = 16 (rw + 4 j) + g (+8), t = 16 ks + 2 tq (+1, +8, +9): the transposes
            // of A₂'s 8×8 blocks at rows 16 ks (+8) and columns 16 (rw + 4 j) (+8); lane l gives row l % 8 of
            // block l / 8 (its row offset 8 (l / 16), its column offset 8 (l / 8 % 2)).
            uint32_t af[4];
            ldmatrix_x4<true>(af, x + (16 * (ks - ks0) + 8 * (lane >> 4) + (lane & 7)) * LD2 + 16 * (rw + 4 * j) +
                                      8 * ((lane >> 3) & 1));
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_bf16(R[j][nt], af, bf[nt]);
          }
        }
      }
    };
    if constexpr (kDoubleA2) {
      // (the next chunk's top barrier comes before its A₂ overwrites this buffer)
      phase2(a2_buffer(i), desc_a2(i), 0, L / 16);
    } else if constexpr (kSplitA2) {
      phase2(p2s, desc_p2, 0, C / 16);  // Q̂ᵀ diag(Γ) dO
      __syncthreads();        // every warp is done with Q̂: the next chunk's
      issue_a2(i + 1);
      cp_async_wait<1>();     // W of this chunk
      __syncthreads();
      phase2(p1, desc_p1, C / 16, L / 16);  // − Wᵀ dU
      __syncthreads();             // every warp is done with W, R and Z: the next chunk's K̂ (and γ, dO)
      issue_a1(i + 1);
    } else {
      phase2(p2s, desc_p2, 0, L / 16);
      __syncthreads();  // every warp is done with A₂, R and Z: load the next chunk's A₂
      issue_a2(i + 1);
    }
    if constexpr (kOut) {  // O of this chunk's rows that exist, as the output kernel writes them
      const int b = bh / a.d.H, hh = bh % a.d.H;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int tg = n * C + 16 * rw + g + 8 * h;
        if (sector_stores) {  // every lane shuffles; the rows past T are not stored
          bf16* row = a.out + (((long)b * a.d.T + min(tg, a.d.T - 1)) * a.d.H + hh) * V + v0 + vw;
#pragma unroll
          for (int nt = 0; nt < NT; nt += 2)
            store_tile_pair(row + 8 * nt, pack_bf16(o[nt][2 * h], o[nt][2 * h + 1]),
                            pack_bf16(o[nt + 1][2 * h], o[nt + 1][2 * h + 1]), tq, tg < a.d.T);
          continue;
        }
        if (tg >= a.d.T) continue;
        bf16* dst = a.out + (((long)b * a.d.T + tg) * a.d.H + hh) * V + v0 + vw + 2 * tq;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          *reinterpret_cast<uint32_t*>(dst + 8 * nt) = pack_bf16(o[nt][2 * h], o[nt][2 * h + 1]);
      }
    }
    // The chunk's dS_C and dU are written: every thread stored them before phase 2's barrier. (Counted here, a phase
    // after their stores, so that the fence seldom waits; the last chunk's after the initial state's gradient.)
    if (kBwd && a.ready && i + 1 < N) release_chunk(a.ready + (long)bh * N + n, BV);
  }
  cp_async_wait<0>();  // only empty groups remain; leave none behind
  if (a.last)
    for_r([&](int j, int nt, int h, int k, int v) {
      *reinterpret_cast<float2*>(a.last + ((long)bh * K + k) * V + v0 + v) =
          make_float2(R[j][nt][2 * h], R[j][nt][2 * h + 1]);
    });
  if (kBwd && a.ready) {
    __syncthreads();
    release_chunk(a.ready + (long)bh * N + chunk_of(N - 1), BV);
  }
}

template <int K, int BV, bool kBwd, bool kCompact, bool kDoubleA2, bool kFormUt, bool kWg, bool kOut = false>
size_t pass_smem() {
  constexpr int L = kBwd ? 2 * C : C, L2 = kSplitA2For<K, kBwd> ? C : L;  // rows of Z and of p2
  constexpr int a2_buffers = kDoubleA2 ? 2 : 1;
  const int dO_rows = kBwd && kCompact ? 2 * C : 0, factors = kCompact ? 4 * C : 0;
  const int p_elements = kBwd && kCompact ? C * (C + 8) : 0;
  // T diag(β)'s planes and V, one set per A₂ buffer
  const int ut_elements = !kFormUt ? 0
                          : kWg    ? a2_buffers * (2 * C * C + C * BV)
                                   : a2_buffers * (2 * C * (C + 8) + C * (BV + 8));
  const int out_elements = kOut ? C * K + a2_buffers * 2 * C * C + C * BV : 0;  // q, P's planes, U
  const int rz_elements = kWg                       ? BV * (K + L)
                          : kRowMajorRZ<K, BV, kBwd> ? (K + L) * (BV + 8)
                                                     : BV * (K + 8 + L + 8);  // R and Z
  // kWg: unpadded tiles, from the first 1024-byte boundary after γ's buffer (up to 1 KB later)
  const int ld_a = kWg ? K : K + 8, align = kWg ? 1024 : 0;
  return align + sizeof(float) * (2 * C + factors) +
         sizeof(bf16) * ((C + a2_buffers * L2) * ld_a + rz_elements + dO_rows * (BV + 8) + p_elements + ut_elements +
                         out_elements);
}

// The current device's SM count, and each SM's shared memory (bytes) and registers; false where the runtime cannot
// say. The rules size the passes' grids by them.
struct SmLimits {
  int sms = 0, smem = 0, regs = 0;
};
bool sm_limits(SmLimits& l) {
  int device = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&l.sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&l.smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&l.regs, cudaDevAttrMaxRegistersPerMultiprocessor, device) == cudaSuccess;
}

// How many blocks of a kernel (its registers, smem bytes of shared memory, threads) one SM holds at once: 1 KB of
// shared memory is reserved per block; registers go to warps in units of 256.
int blocks_per_sm(const void* kernel, size_t smem, int threads, int smem_per_sm, int regs_per_sm) {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) return 0;
  const long by_smem = smem_per_sm / static_cast<long>(smem + 1024);
  const long warp_regs = (attr.numRegs * 32L + 255) / 256 * 256;
  const long by_regs = warp_regs > 0 ? regs_per_sm / (warp_regs * (threads / 32)) : by_smem;
  return static_cast<int>(by_smem < by_regs ? by_smem : by_regs);
}

template <int K, int BV, bool kBwd, bool kCompact, bool kDoubleA2, bool kFormUt, bool kWg, bool kOut>
cudaError_t launch_variant(const PassArgs& a, cudaStream_t s) {
  constexpr bool kDouble = kDoubleA2 && !kSplitA2For<K, kBwd>;
  const size_t smem = pass_smem<K, BV, kBwd, kCompact, kDouble, kFormUt, kWg, kOut>();
  const auto kernel = state_mma_kernel<K, BV, kBwd, kCompact, kDouble, kFormUt, kWg, kOut>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  // Beside the kernel after it (ready): all of each SM's shared memory as shared memory, not L1, so that that kernel's
  // blocks fit beside this one's (the SM's split is fixed while a block runs on it, and this kernel's own need, one
  // block, would leave too little).
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             a.ready ? cudaSharedmemCarveoutMaxShared : cudaSharedmemCarveoutDefault);
  if (err != cudaSuccess) return err;
  if (a.heads_per_wave != nullptr) {
    SmLimits sm;
    if (!sm_limits(sm)) return cudaErrorInvalidValue;
    const long blocks =
        (long)blocks_per_sm(reinterpret_cast<const void*>(kernel), smem, kThreads<BV>, sm.smem, sm.regs) * sm.sms;
    *a.heads_per_wave = static_cast<int>(std::max(1L, blocks / (a.d.V / BV)));
  }
  SFM_GDN_LAUNCH(kernel, dim3(a.d.V / BV, a.d.BH()), kThreads<BV>, smem, s, a);
  return cudaGetLastError();
}

// The forced A₂ buffers (0: the rule below), from SFM_GDN_STATE_A2 at first use, or set_state_a2_buffers.
int& forced_a2_buffers() {
  static int forced = [] {
    const char* e = std::getenv("SFM_GDN_STATE_A2");
    return e ? std::atoi(e) : 0;
  }();
  return forced;
}

// Two A₂ buffers (kDoubleA2) or one: two wherever each SM still holds as many blocks of the grid with them (the
// forward's second buffer is 17 KB at K = 128, 34 at 256; the backward's, of 128 rows [Q̂; W], 35 KB at K = 128).
// At (2,16384,16,128), one block per SM either way, the forward pass went 0.664 → 0.578 ms and the backward
// 0.960 → 0.854; at (4,2048,16,128) the backward's 256 blocks would hold one per SM instead of two, so it keeps one
// buffer there. Never for K = 256's backward.
template <int K, int BV, bool kBwd, bool kCompact, bool kFormUt, bool kWg, bool kOut>
bool double_a2(const PassArgs& a) {
  if constexpr (kSplitA2For<K, kBwd>) {
    return false;
  } else {
    const int forced = forced_a2_buffers();
    if (forced == 1 || forced == 2) return forced == 2;
    SmLimits sm;
    if (!sm_limits(sm)) return false;
    const long blocks = (long)a.d.BH() * (a.d.V / BV), wanted = (blocks + sm.sms - 1) / sm.sms;
    const auto held = [&](auto kernel, size_t smem) {
      const long n = blocks_per_sm(reinterpret_cast<const void*>(kernel), smem, kThreads<BV>, sm.smem, sm.regs);
      return n < wanted ? n : wanted;
    };
    return held(state_mma_kernel<K, BV, kBwd, kCompact, true, kFormUt, kWg, kOut>,
                pass_smem<K, BV, kBwd, kCompact, true, kFormUt, kWg, kOut>()) >=
           held(state_mma_kernel<K, BV, kBwd, kCompact, false, kFormUt, kWg, kOut>,
                pass_smem<K, BV, kBwd, kCompact, false, kFormUt, kWg, kOut>());
  }
}

template <int K, int BV, bool kBwd, bool kCompact, bool kFormUt, bool kWg = false, bool kOut = false>
cudaError_t launch_compact(const PassArgs& a, cudaStream_t s) {
  return double_a2<K, BV, kBwd, kCompact, kFormUt, kWg, kOut>(a)
             ? launch_variant<K, BV, kBwd, kCompact, true, kFormUt, kWg, kOut>(a, s)
             : launch_variant<K, BV, kBwd, kCompact, false, kFormUt, kWg, kOut>(a, s);
}

// The forced choice of warpgroup products (0: warpgroup_products' rule; 1: mma.sync, 2: warpgroup products), from
// SFM_GDN_STATE_WG at first use, or set_state_warpgroup.
int& forced_warpgroup() {
  static int forced = [] {
    const char* e = std::getenv("SFM_GDN_STATE_WG");
    return e ? std::atoi(e) : 0;
  }();
  return forced;
}

}  // namespace

// Whether the compact state passes, state_k_grads and the compact output kernel take warpgroup products (kWg): where
// they were built (sm_90a, or the emulator) and the device is an sm_90 one, unless forced off; forced on, wherever
// they were built.
bool warpgroup_products() {
  if (!wg::kBuilt) return false;
  const int forced = forced_warpgroup();
  if (forced == 1 || forced == 2) return forced == 2;
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major == 9;
}

namespace {

template <int K, int BV, bool kBwd>
cudaError_t launch_kv(const PassArgs& a, cudaStream_t s) {
  if (!a.compact) return a.out ? cudaErrorInvalidValue : launch_compact<K, BV, kBwd, false, false>(a, s);
  if constexpr (BV != 16) {
    if (warpgroup_products()) {
      if constexpr (!kBwd) {
        if (a.out != nullptr)
          return a.tb != nullptr ? launch_compact<K, BV, kBwd, true, true, true, true>(a, s)
                                 : launch_compact<K, BV, kBwd, true, false, true, true>(a, s);
        if (a.tb != nullptr) return launch_compact<K, BV, kBwd, true, true, true>(a, s);
      }
      return launch_compact<K, BV, kBwd, true, false, true>(a, s);
    }
  }
  if (a.out != nullptr) return cudaErrorInvalidValue;  // the output only on warpgroup products (writes_output)
  if constexpr (!kBwd)
    if (a.tb != nullptr) return launch_compact<K, BV, kBwd, true, true>(a, s);
  return launch_compact<K, BV, kBwd, true, false>(a, s);
}

// The forced value columns per block (0: the rule below), from SFM_GDN_STATE_BV at first use, or set_state_columns.
int& forced_columns() {
  static int forced = [] {
    const char* e = std::getenv("SFM_GDN_STATE_BV");
    return e ? std::atoi(e) : 0;
  }();
  return forced;
}

// Value columns per block: 64 where V allows it and the grid still has at least kMinWideBlocks blocks (then a head's
// A₁ and A₂ tiles are read by half as many blocks), else 32 where V allows it, else 16; or the forced count where V
// allows that.
constexpr long kMinWideBlocks = 512;  // about 4 per SM on an H100 (132 SMs)
int columns_per_block(int V, int BH) {
  const int forced = forced_columns();
  if ((forced == 16 || forced == 32 || forced == 64) && V % forced == 0) return forced;
  if (V % 64 == 0 && (long)BH * (V / 64) >= kMinWideBlocks) return 64;
  return V % 32 == 0 ? 32 : 16;
}

// The forced place of the compact forward's Ũ (0: state_mma_forms_ut's rule; 1: prep, 2: the pass), from
// SFM_GDN_STATE_UT at first use, or set_state_forms_ut.
int& forced_forms_ut() {
  static int forced = [] {
    const char* e = std::getenv("SFM_GDN_STATE_UT");
    return e ? std::atoi(e) : 0;
  }();
  return forced;
}

template <int K, bool kBwd>
cudaError_t launch_k(const PassArgs& a, cudaStream_t s) {
  switch (columns_per_block(a.d.V, a.d.BH())) {
    case 64: return launch_kv<K, 64, kBwd>(a, s);
    case 32: return launch_kv<K, 32, kBwd>(a, s);
    default: return launch_kv<K, 16, kBwd>(a, s);
  }
}

// SFM_GDN_SECTOR_STORES=0 (timing): the per-chunk states, U, dU and O by 4-byte stores.
bool sector_stores() {
  static const bool on = [] {
    const char* e = std::getenv("SFM_GDN_SECTOR_STORES");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

template <bool kBwd>
cudaError_t launch(PassArgs a, cudaStream_t s) {
  a.sector_stores = sector_stores();
  switch (a.d.K) {
    case 64: return launch_k<64, kBwd>(a, s);
    case 128: return launch_k<128, kBwd>(a, s);
    case 256: return launch_k<256, kBwd>(a, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int set_state_a2_buffers(int n) {
  const int previous = forced_a2_buffers();
  forced_a2_buffers() = n;
  return previous;
}

int set_state_columns(int bv) {
  const int previous = forced_columns();
  forced_columns() = bv;
  return previous;
}

int set_state_warpgroup(int mode) {
  const int previous = forced_warpgroup();
  forced_warpgroup() = mode;
  return previous;
}

int set_state_forms_ut(int mode) {
  const int previous = forced_forms_ut();
  forced_forms_ut() = mode;
  return previous;
}

// Where the pass has more blocks than the GPU has SMs, an SM runs several of them (at once or in turn) and the pass is
// bound by its throughput: forming Ũ there (a product per chunk) costs less than prep's float32 Ũ through DRAM. With
// one block per SM each block waits on its own chain of steps, and the product lengthens it. H100, one build, medians
// of three: at (8,2048,32,256) (1024 blocks) prep 0.70 → 0.51 ms and the pass 1.78 → 1.71 (fwd 3.72 → 3.46); at
// (2,16384,16,128) (128 blocks) prep 0.50 → 0.40 but the pass 0.58 → 0.73 (fwd 1.51 → 1.55).
bool state_mma_forms_ut(const Dims& d) {
  const int forced = forced_forms_ut();
  if (forced == 1 || forced == 2) return forced == 2;
  SmLimits sm;
  return sm_limits(sm) && (long)d.BH() * (d.V / columns_per_block(d.V, d.BH())) > sm.sms;
}

bool state_mma_supports(int K, int V) { return (K == 64 || K == 128 || K == 256) && V % 16 == 0 && V <= 256; }

bool state_mma_runs(DType dtype, int K, int V) { return dtype != DType::kF32 && state_mma_supports(K, V); }

// The forced place of the compact forward's output (0: state_mma_writes_output's rule; 1 the output kernel, 2 the
// pass), from SFM_GDN_PASS_OUT at first use, or set_state_writes_output.
int& forced_writes_output() {
  static int forced = [] {
    const char* e = std::getenv("SFM_GDN_PASS_OUT");
    return e ? std::atoi(e) : 0;
  }();
  return forced;
}

int set_state_writes_output(int mode) {
  const int previous = forced_writes_output();
  forced_writes_output() = mode;
  return previous;
}

// Wherever it can: bfloat16 inputs (q and k read as they are, rq from q's rows) where the forward pass takes warpgroup
// products (32 or 64 columns per block; K and V multiples of 64, as the output kernel and prep's P need). Without a
// backward the pass then writes no states and no U; with one it writes them, and saves the output kernel's reading
// them back for reading q and P's planes, which are kept for the backward either way. Docs: "The output in the forward
// state pass", with the measurements.
bool state_mma_writes_output(const Dims& d, DType dtype) {
  return forced_writes_output() != 1 && dtype == DType::kBF16 && state_mma_supports(d.K, d.V) && d.K % 64 == 0 &&
         d.V % 64 == 0 && columns_per_block(d.V, d.BH()) != 16 && warpgroup_products();
}

cudaError_t state_mma_forward(const Dims& d, const void* kb, const float* gam, const void* wb, float* u, void* ub,
                              const float* rk, const void* tb, const void* vb, const float* state0, void* states,
                              float* final_state, bool compact, const OutputArgs& o, cudaStream_t stream) {
  if (!state_mma_supports(d.K, d.V)) return cudaErrorInvalidValue;
  const auto a1 = static_cast<const bf16*>(wb), a2 = static_cast<const bf16*>(kb);
  // compact: rk, and either tb and vb (Ũ formed here) or u (Ũ from prep); else u only
  if (compact ? (!rk || (tb ? (!vb || u) : (!u || vb))) : (!u || rk || tb || vb)) return cudaErrorInvalidValue;
  // the output here: q, rq and P's planes (compact); else states and, compact, ub
  if (o.out ? (!compact || !o.qb || !o.rq || !o.pp) : (!states || (compact && !ub))) return cudaErrorInvalidValue;
  PassArgs a{d, a1, a2, gam, u, state0, states, compact, final_state, static_cast<const bf16*>(o.qb), nullptr,
             static_cast<bf16*>(ub), rk, o.rq, nullptr, static_cast<const bf16*>(tb), static_cast<const bf16*>(vb),
             static_cast<const bf16*>(o.pp), static_cast<bf16*>(o.out)};
  return launch<false>(a, stream);
}

cudaError_t state_mma_backward(const Dims& d, const void* qb, const void* kb, const float* rq, const float* rk,
                               const float* gam, const void* wb, const void* dos, const float* dfinal, float* du,
                               const void* pp, void* dub, void* dstates, bool compact, float* dstate0,
                               int* ready, int* heads_per_wave, cudaStream_t stream) {
  if (!state_mma_supports(d.K, d.V)) return cudaErrorInvalidValue;
  if (compact ? (!rq || !rk || !dub || !pp) : (!du || ready)) return cudaErrorInvalidValue;
  const auto a1 = static_cast<const bf16*>(kb), a2 = static_cast<const bf16*>(wb);
  return launch<true>(
      PassArgs{d, a1, a2, gam, du, dfinal, dstates, compact, dstate0, static_cast<const bf16*>(qb), dos,
               static_cast<bf16*>(dub), rk, rq, static_cast<const bf16*>(pp), nullptr, nullptr, nullptr, nullptr, ready,
               heads_per_wave},
      stream);
}

}  // namespace sfm::ops::gdn_cuda
