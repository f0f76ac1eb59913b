// A minimal parallel-for over std::thread for the CPU ops: splits [0, n) into at most `threads` contiguous
// chunks. Threads are spawned per call: simple and good enough for the op sizes of one frame.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace nfd {
namespace cpu {

// fn(begin, end) on disjoint chunks; runs inline when threads <= 1 or n is small (`grain` = min items/chunk).
template <typename Fn>
void parallel_for(int threads, int64_t n, Fn fn, int64_t grain = 1) {
  if (n <= 0) return;
  int64_t chunks = std::min<int64_t>(std::max(threads, 1), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (chunks <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(chunks);
  int64_t step = (n + chunks - 1) / chunks;
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t b = c * step, e = std::min(n, b + step);
    if (b >= e) break;
    pool.emplace_back([&, c, b, e] {
      try {
        fn(b, e);
      } catch (...) {
        errors[c] = std::current_exception();
      }
    });
  }
  try {
    fn(int64_t(0), std::min(n, step));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Sets OpenBLAS' thread count (only when it changes).
void set_blas_threads(int threads);

}  // namespace cpu
}  // namespace nfd
