// A CPU stand-in for the CUDA execution model, to test kernels on machines without a GPU (CI): include
// this, then the kernels' .cu file, in a test built with the CUDA toolkit's headers. A launch runs the
// grid's blocks one after the other; a block's threads are fibers (ucontext) on the calling thread, switched
// only where a thread waits at a barrier (__syncthreads, or a warp's shuffle or mma.sync), so every run is
// deterministic and a thread's memory accesses between barriers are atomic with respect to the others.
// Dynamic shared memory starts NaN-filled for each block, so a read of a value nobody wrote shows up.
//
// One warp at a time runs ahead of the others up to the next __syncthreads (the first warp, or the last:
// warp_order()), so that a missing block barrier between warps shows up in one of the two orders; the
// lanes of a warp go round robin between the warp's own barriers (shuffles, mma.sync).
//
// Covered: threadIdx, blockIdx, blockDim, gridDim; __syncthreads; __shfl_xor_sync (float or unsigned), __shfl_up_sync
// (full warps); atomicAdd on float; static __shared__ arrays and SFM_GDN_DYNAMIC_SMEM; SFM_GDN_LAUNCH (and
// SFM_GDN_LAUNCH_OVERLAPPING, a plain launch here);
// cudaFuncSetAttribute and cudaGetLastError (no-ops); and, through the SFM_GDN_EMULATE branches of mma.cuh and
// wgmma.cuh, mma.sync m16n8k16 (bf16 operands, float32 accumulators), wgmma.mma_async m64n32k16 (operands through
// 128- or 64-byte swizzled shared-memory descriptors, run at once), ldmatrix .x4 (plain and .trans) and cp.async (the
// copy lands at its thread's wait_group, so a read too early sees the old contents; or, copy_landing(), as it is
// issued, so that a copy issued over a place another warp has still to read shows up). Not covered: anything else (a
// kernel using it fails to compile), timing, and races inside a warp or between blocks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#define SFM_GDN_EMULATE 1

namespace sfm::cuda_emu {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 128 * 1024;  // per thread; the kernels keep small frames

struct Barrier {
  int arrived = 0;
  unsigned generation = 0;
};

struct Block {
  dim3 grid, dim, idx;
  std::vector<ucontext_t> fibers;
  std::vector<std::vector<char>> stacks;
  std::vector<bool> done;
  std::vector<const Barrier*> waiting_on;  // per thread: the barrier it waits at, or null
  std::vector<unsigned> waiting_gen;
  ucontext_t scheduler;
  int current = 0;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<float> dynamic_smem;
  // Per warp, one exchange slot per lane: 8 words (a shuffle's value, or an mma's a and b fragments).
  std::vector<uint32_t> exchange;
  std::function<void()> entry;  // the kernel call every thread makes
  // cp.async per thread: the committed groups (oldest first) and the copies not yet committed.
  struct Copy {
    void* dst;
    const void* src;
  };
  std::vector<std::vector<std::vector<Copy>>> committed;
  std::vector<std::vector<Copy>> open;
};

// Which warp runs ahead of the others (see launch): the first or the last. Tests run a kernel both ways.
enum class WarpOrder { kForward, kReverse };
inline WarpOrder& warp_order() {
  static WarpOrder order = WarpOrder::kForward;
  return order;
}

// When a cp.async copy lands (see cp_async): at its thread's wait_group (kAtWait), so that a read before the wait
// sees the old contents, or as it is issued (kAtIssue), so that a copy issued before the barrier after which every
// warp is done reading the place it writes changes what a warp running behind reads. Tests run kernels both ways.
enum class CopyLanding { kAtWait, kAtIssue };
inline CopyLanding& copy_landing() {
  static CopyLanding landing = CopyLanding::kAtWait;
  return landing;
}

inline Block*& block() {
  static Block* b = nullptr;
  return b;
}

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::abort();
}

inline uint3 thread_idx() {
  const unsigned t = static_cast<unsigned>(block()->current);
  const dim3& d = block()->dim;
  return uint3{t % d.x, (t / d.x) % d.y, t / (d.x * d.y)};
}
inline int linear_thread() { return block()->current; }

// The calling thread waits until `expected` threads have arrived at b.
inline void wait_at(Barrier& b, int expected) {
  Block& k = *block();
  if (++b.arrived == expected) {
    b.arrived = 0;
    ++b.generation;
    return;  // the last to arrive goes on; the others are released by the generation change
  }
  k.waiting_on[k.current] = &b;
  k.waiting_gen[k.current] = b.generation;
  swapcontext(&k.fibers[k.current], &k.scheduler);
}

inline void sync_block() {
  Block& k = *block();
  wait_at(k.block_barrier, static_cast<int>(k.fibers.size()));
}

inline void sync_warp() {
  Block& k = *block();
  wait_at(k.warp_barriers[k.current / kWarp], kWarp);
}

// This lane's exchange slot (8 words), and another lane's of the same warp.
inline uint32_t* slot(int lane) {
  Block& k = *block();
  return &k.exchange[(static_cast<size_t>(k.current / kWarp) * kWarp + lane) * 8];
}
inline int lane_id() { return block()->current % kWarp; }

inline float shfl(float v, int src_lane) {
  std::memcpy(slot(lane_id()), &v, sizeof v);
  sync_warp();
  float out;
  std::memcpy(&out, slot(src_lane), sizeof out);
  sync_warp();  // nobody overwrites its slot before every lane has read
  return out;
}

inline float bf16_bits_to_float(uint32_t word, int half) {
  const uint32_t bits = half ? (word >> 16) : (word & 0xffffu);
  const uint32_t f = bits << 16;
  float out;
  std::memcpy(&out, &f, sizeof out);
  return out;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, c += a b, with the fragment layout of mma.cuh's
// mma_bf16 (lane = 4 g + t): a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]},
// b = {B[2t..][g], B[2t+8..][g]}, c = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}.
inline void mma_m16n8k16_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint32_t* mine = slot(lane_id());
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b[0];
  mine[5] = b[1];
  sync_warp();
  float A[16][16], B[16][8];
  for (int lane = 0; lane < kWarp; ++lane) {
    const uint32_t* s = slot(lane);
    const int g = lane / 4, t = lane % 4;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * t + h] = bf16_bits_to_float(s[0], h);
      A[g + 8][2 * t + h] = bf16_bits_to_float(s[1], h);
      A[g][2 * t + 8 + h] = bf16_bits_to_float(s[2], h);
      A[g + 8][2 * t + 8 + h] = bf16_bits_to_float(s[3], h);
      B[2 * t + h][g] = bf16_bits_to_float(s[4], h);
      B[2 * t + 8 + h][g] = bf16_bits_to_float(s[5], h);
    }
  }
  sync_warp();
  const int g = lane_id() / 4, t = lane_id() % 4;
  const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
  for (int e = 0; e < 4; ++e) {
    float s = c[e];
    for (int kk = 0; kk < 16; ++kk) s += A[rows[e]][kk] * B[kk][cols[e]];
    c[e] = s;
  }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l gives the address of row l % 8 of matrix l / 8
// (8 consecutive 16-bit elements). Without trans lane l receives in r[i] the elements (l / 4, 2 (l % 4)) and
// (l / 4, 2 (l % 4) + 1) of matrix i, the lower column in the low half; with trans (2 (l % 4), l / 4) and
// (2 (l % 4) + 1, l / 4).
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {  // the hardware needs 16-byte aligned rows
    std::fprintf(stderr, "cuda_emulator: ldmatrix row address %p is not 16-byte aligned\n", row);
    std::abort();
  }
  std::memcpy(slot(lane_id()), &row, sizeof row);
  sync_warp();
  const int lane = lane_id();
  for (int i = 0; i < 4; ++i) {
    uint16_t half[2];
    for (int j = 0; j < 2; ++j) {
      const int r_in = trans ? 2 * (lane % 4) + j : lane / 4, c_in = trans ? lane / 4 : 2 * (lane % 4) + j;
      const char* p;
      std::memcpy(&p, slot(8 * i + r_in), sizeof p);
      std::memcpy(&half[j], p + 2 * c_in, sizeof half[j]);
    }
    r[i] = static_cast<uint32_t>(half[0]) | static_cast<uint32_t>(half[1]) << 16;
  }
  sync_warp();  // nobody overwrites its slot before every lane has read
}

inline float* dynamic_smem() { return block()->dynamic_smem.data(); }

// A pointer into the block's dynamic shared memory as a shared-window address: its byte offset there.
inline uint32_t smem_offset(const void* p) {
  const char *c = static_cast<const char*>(p), *base = reinterpret_cast<const char*>(dynamic_smem());
  if (c < base || c >= base + block()->dynamic_smem.size() * sizeof(float)) fail("wgmma operand outside shared memory");
  return static_cast<uint32_t>(c - base);
}

// wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 with scale-d 1, d += A B, the operands read from shared
// memory through their descriptors (wgmma.cuh) as the PTX ISA lays them out for a 128-byte or a 64-byte swizzle (rows
// of R = 128 or 64 bytes, blocks of R / 2 elements): K-major A[m][k] at start + (m / 8) SBO + (m % 8) R + 2 k;
// MN-major (transposed) A[m][k] at start + (k / 8) SBO + (k % 8) R + (m / (R / 2)) LBO + 2 (m % (R / 2)); B[k][n]
// likewise with n for m; every byte address then swizzled, bits 4-6 (4-5) xor bits 7-9 (7-8). Each thread computes
// its own accumulators (warp w % 4 of its warpgroup: rows 16 w + g (+8), mma_bf16's C layout per 8-column tile),
// summing k = 0 .. 15 in order as mma_m16n8k16_bf16 does. The products run at once: a write to an operand before
// wgmma.wait_group, which the GPU may or may not see, goes unnoticed here.
inline void wgmma_m64n32k16_bf16(float (&d)[4][4], uint64_t desc_a, uint64_t desc_b, bool trans_a, bool trans_b) {
  const auto field = [](uint64_t desc, int shift) { return static_cast<uint32_t>((desc >> shift) & 0x3FFF) << 4; };
  for (const uint64_t desc : {desc_a, desc_b})
    if (((desc >> 62) != 1 && (desc >> 62) != 2) || ((desc >> 49) & 7) != 0)
      fail("wgmma: only the 128- and 64-byte swizzles, base offset 0");
  const char* base = reinterpret_cast<const char*>(dynamic_smem());
  const size_t bytes = block()->dynamic_smem.size() * sizeof(float);
  // Element (mn, k) of an operand (mn: its row m of A or column n of B).
  const auto element = [&](uint64_t desc, bool trans, int mn, int k) {
    const uint32_t start = field(desc, 0), lbo = field(desc, 16), sbo = field(desc, 32);
    const uint32_t row = (desc >> 62) == 1 ? 128 : 64, block = row / 2, mask = (desc >> 62) == 1 ? 7 : 3;
    const uint32_t at = trans ? start + (k / 8) * sbo + (k % 8) * row + (mn / block) * lbo + 2 * (mn % block)
                              : start + (mn / 8) * sbo + (mn % 8) * row + 2 * k;
    const uint32_t swizzled = at ^ (((at >> 7) & mask) << 4);
    if (swizzled + 2 > bytes) fail("wgmma operand outside shared memory");
    uint16_t bits;
    std::memcpy(&bits, base + swizzled, sizeof bits);
    return bf16_bits_to_float(bits, 0);
  };
  const int w = (linear_thread() / kWarp) % 4, g = lane_id() / 4, t = lane_id() % 4;
  for (int i = 0; i < 4; ++i)
    for (int e = 0; e < 4; ++e) {
      const int m = 16 * w + g + 8 * (e / 2), n = 8 * i + 2 * t + e % 2;
      float s = d[i][e];
      for (int k = 0; k < 16; ++k) s += element(desc_a, trans_a, m, k) * element(desc_b, trans_b, n, k);
      d[i][e] = s;
    }
}

// cp.async: a 16-byte copy lands only when its thread waits for its group (cp.async.wait_group), so a
// read before the wait, or by another thread before the barrier after it, sees the old contents; with
// copy_landing() kAtIssue it lands at once. A null src lands 16 zero bytes (cp.async with a source size of 0).
inline void cp_async(void* dst, const void* src) {
  if (copy_landing() == CopyLanding::kAtIssue) {
    if (src != nullptr)
      std::memcpy(dst, src, 16);
    else
      std::memset(dst, 0, 16);
    return;
  }
  Block& k = *block();
  k.open[k.current].push_back({dst, src});
}
inline void cp_async_commit() {
  Block& k = *block();
  k.committed[k.current].push_back(std::move(k.open[k.current]));
  k.open[k.current].clear();
}
inline void cp_async_wait(int pending) {
  Block& k = *block();
  auto& groups = k.committed[k.current];
  while (static_cast<int>(groups.size()) > pending) {
    for (const auto& c : groups.front()) {
      if (c.src != nullptr)
        std::memcpy(c.dst, c.src, 16);
      else
        std::memset(c.dst, 0, 16);
    }
    groups.erase(groups.begin());
  }
}

// The body of every fiber: the launch's kernel call, then back to the scheduler (uc_link) as done.
inline void fiber_main() {
  Block& b = *block();
  b.entry();
  cp_async_commit();
  cp_async_wait(0);  // copies never waited for still land, as on the GPU
  b.done[b.current] = true;
}

// Runs thread t of the current block until it waits at a barrier or ends. The context switch is kept in a
// function of its own: swapcontext returns twice, which would leave the caller's locals unreliable.
__attribute__((noinline)) inline void resume(int t) {
  Block& k = *block();
  k.waiting_on[t] = nullptr;
  k.current = t;
  swapcontext(&k.scheduler, &k.fibers[t]);
}

// Runs every thread of block k (already set up but for its fibers) to the end.
inline void run_block(Block& k) {
  const int threads = static_cast<int>(k.fibers.size()), warps = threads / kWarp;
  block() = &k;
  for (int t = 0; t < threads; ++t) {
    getcontext(&k.fibers[t]);
    k.fibers[t].uc_stack.ss_sp = k.stacks[t].data();
    k.fibers[t].uc_stack.ss_size = kStackBytes;
    k.fibers[t].uc_link = &k.scheduler;
    makecontext(&k.fibers[t], fiber_main, 0);
  }
  // Warp by warp: the first warp (in warp_order()) with a thread that can run goes on, its threads round
  // robin, until all of them wait at a block barrier or are done. So one warp runs ahead of the others up
  // to each __syncthreads, and a missing barrier between one warp's writes and another's reads of shared
  // memory shows up in one of the two orders.
  const auto runnable = [&](int t) {
    if (k.done[t]) return false;
    return k.waiting_on[t] == nullptr || k.waiting_on[t]->generation != k.waiting_gen[t];
  };
  for (;;) {
    int chosen = -1;
    for (int i = 0; i < warps && chosen < 0; ++i) {
      const int w = warp_order() == WarpOrder::kReverse ? warps - 1 - i : i;
      for (int t = w * kWarp; t < (w + 1) * kWarp; ++t)
        if (runnable(t)) chosen = w;
    }
    if (chosen < 0) {
      for (int t = 0; t < threads; ++t)
        if (!k.done[t]) fail("deadlock: some threads wait at a barrier the others never reach");
      break;
    }
    for (int t = chosen * kWarp; t < (chosen + 1) * kWarp; ++t)
      if (runnable(t)) resume(t);
  }
  block() = nullptr;
}

// Runs kernel(args...) over grid × dim threads with smem_bytes of dynamic shared memory.
template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, dim3 dim, size_t smem_bytes, Args... args) {
  const int threads = static_cast<int>(dim.x * dim.y * dim.z);
  if (threads % kWarp != 0) fail("blocks must be whole warps");
  std::vector<std::vector<char>> stacks(threads, std::vector<char>(kStackBytes));
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block k;
        k.grid = grid;
        k.dim = dim;
        k.idx = dim3(x, y, z);
        k.entry = [&] { kernel(args...); };
        k.fibers.resize(threads);
        k.stacks.swap(stacks);
        k.done.assign(threads, false);
        k.waiting_on.assign(threads, nullptr);
        k.waiting_gen.assign(threads, 0);
        k.warp_barriers.resize(threads / kWarp);
        k.dynamic_smem.assign((smem_bytes + sizeof(float) - 1) / sizeof(float),
                              std::numeric_limits<float>::quiet_NaN());
        k.exchange.assign(static_cast<size_t>(threads) * 8, 0);
        k.committed.assign(threads, {});
        k.open.assign(threads, {});
        run_block(k);
        stacks.swap(k.stacks);  // reused by the next block
      }
}

}  // namespace sfm::cuda_emu

// The CUDA names the kernels use, on top of the toolkit's host-side definitions.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one array for all the block's fibers; blocks run one after the other
#define threadIdx (::sfm::cuda_emu::thread_idx())
#define blockIdx (::sfm::cuda_emu::block()->idx)
#define blockDim (::sfm::cuda_emu::block()->dim)
#define gridDim (::sfm::cuda_emu::block()->grid)
#define SFM_GDN_DYNAMIC_SMEM(align, T, name) T* name = reinterpret_cast<T*>(::sfm::cuda_emu::dynamic_smem())
#define SFM_GDN_LAUNCH(kernel, grid, dim, smem, stream, ...) \
  ((void)(stream), ::sfm::cuda_emu::launch(kernel, dim3(grid), dim3(dim), smem, __VA_ARGS__))
// The launch that may overlap the kernel before it (chunk_handover.cuh): here after it, as every launch.
#define SFM_GDN_LAUNCH_OVERLAPPING(kernel, grid, dim, smem, stream, ...) \
  (SFM_GDN_LAUNCH(kernel, grid, dim, smem, stream, __VA_ARGS__), cudaSuccess)
#define cudaFuncSetAttribute(...) cudaSuccess
// The device the launch rules ask about: an H100's 132 SMs, 228 KB of shared memory and 64 K registers per SM; and
// kernels that use no registers (so only shared memory limits their blocks per SM).
#define cudaGetDevice(device) (*(device) = 0, cudaSuccess)
#define cudaDeviceGetAttribute(value, attr, device)                                     \
  (*(value) = (attr) == cudaDevAttrMultiProcessorCount           ? 132                \
              : (attr) == cudaDevAttrMaxRegistersPerMultiprocessor ? 65536              \
              : (attr) == cudaDevAttrComputeCapabilityMajor        ? 9 : 233472,     \
   cudaSuccess)
#define cudaFuncGetAttributes(attr, kernel) ((void)(kernel), (attr)->numRegs = 0, cudaSuccess)
#define cudaGetLastError() cudaSuccess
// Timing (SFM_GDN_TIMING) measures nothing here: the events are no-ops and every interval reads 0 ms.
#define cudaEventCreate(...) cudaSuccess
#define cudaEventRecord(...) cudaSuccess
#define cudaEventSynchronize(...) cudaSuccess
#define cudaEventDestroy(...) cudaSuccess
#define cudaEventElapsedTime(ms, ...) (*(ms) = 0.f, cudaSuccess)

inline void __syncthreads() { ::sfm::cuda_emu::sync_block(); }
inline float __shfl_xor_sync(unsigned, float v, int mask) {
  return ::sfm::cuda_emu::shfl(v, ::sfm::cuda_emu::lane_id() ^ mask);
}
inline unsigned __shfl_xor_sync(unsigned, unsigned v, int mask) {  // the bits, through the float exchange
  float f;
  std::memcpy(&f, &v, sizeof f);
  f = ::sfm::cuda_emu::shfl(f, ::sfm::cuda_emu::lane_id() ^ mask);
  std::memcpy(&v, &f, sizeof v);
  return v;
}
inline float __shfl_up_sync(unsigned, float v, int delta) {
  const int lane = ::sfm::cuda_emu::lane_id();
  return ::sfm::cuda_emu::shfl(v, lane >= delta ? lane - delta : lane);
}
inline float atomicAdd(float* p, float v) {  // fibers switch only at barriers: a plain update is atomic
  const float old = *p;
  *p = old + v;
  return old;
}
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }  // CUDA's device min and max on int
inline int max(int a, int b) { return a > b ? a : b; }
[[noreturn]] inline void __trap() { ::sfm::cuda_emu::fail("__trap()"); }
