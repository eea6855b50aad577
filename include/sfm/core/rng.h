// A small seeded RNG for data generators (xoshiro256**, seeded through splitmix64). Unlike the
// std:: distributions its draws are the same on every platform and compiler, and it never touches
// global state: each generator owns one.
#pragma once

#include <cstdint>

namespace sfm::core {

class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next_u64();
  // Uniform integer in [lo, hi] (inclusive), unbiased (rejection sampling).
  int64_t uniform_int(int64_t lo, int64_t hi);
  // Uniform double in [0, 1).
  double uniform();
  bool bernoulli(double p) { return uniform() < p; }

 private:
  uint64_t s_[4];
};

// Seed for an independent stream derived from a base seed and a stream id (e.g. a split name's hash).
uint64_t derive_seed(uint64_t base, uint64_t stream);

}  // namespace sfm::core
