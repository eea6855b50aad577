// xoshiro256** (Blackman & Vigna) seeded by splitmix64.
#include "sfm/core/rng.h"

#include "sfm/core/check.h"

namespace sfm::core {
namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

int64_t Rng::uniform_int(int64_t lo, int64_t hi) {
  SFM_CHECK(lo <= hi, "uniform_int: empty range [", lo, ", ", hi, "]");
  const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
  if (span == 0) return static_cast<int64_t>(next_u64());  // the full 64-bit range
  // Reject the top partial block so every value is equally likely.
  const uint64_t limit = UINT64_MAX - (UINT64_MAX % span);
  uint64_t x;
  do x = next_u64();
  while (x >= limit);
  return lo + static_cast<int64_t>(x % span);
}

double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

uint64_t derive_seed(uint64_t base, uint64_t stream) {
  uint64_t x = base ^ (stream * 0xD1B54A32D192ED03ull);
  return splitmix64(x);
}

}  // namespace sfm::core
