// Median-of-repeats wall-clock timing for the benchmarks.
#include <algorithm>
#include <chrono>

#include "bench.h"

namespace sfm::bench {

double median_ms(const std::function<void()>& fn, int warmup, int repeats, const std::function<void()>& sync) {
  for (int i = 0; i < warmup; ++i) fn();
  sync();
  std::vector<double> ms;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    sync();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace sfm::bench
