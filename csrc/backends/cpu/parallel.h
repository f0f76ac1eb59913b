// parallel_for for the CPU ops: splits [0, n) into at most `threads` contiguous chunks and runs them on a
// process-wide pool of worker threads that live for the whole process. Spawning threads per call cost more than
// the small ops of one frame (tens of microseconds each, hundreds of ops a frame).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>

namespace nfd {
namespace cpu {

// Runs fn(begin, end) over `chunks` equal chunks of [0, n) on the pool (the caller takes chunks too) and waits
// for all; the first exception thrown by a chunk is rethrown. Runs fn(0, n) inline when called from inside
// another parallel_for or while the pool serves another caller (correct, only serial).
void parallel_for_impl(int chunks, int64_t n, const std::function<void(int64_t, int64_t)>& fn);

// fn(begin, end) on disjoint chunks of [0, n), at most `threads` of them and none smaller than `grain` items;
// inline when that makes one chunk.
template <typename Fn>
void parallel_for(int threads, int64_t n, Fn fn, int64_t grain = 1) {
  if (n <= 0) return;
  const int64_t chunks = std::min<int64_t>(std::max(threads, 1), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (chunks <= 1) return fn(int64_t(0), n);  // no std::function, no pool: the common small case
  parallel_for_impl(int(chunks), n, fn);
}

// The grain for items that each cost about `work` element operations: a chunk should hold at least
// kMinChunkWork of them (10-20 us). Handing a chunk to a spinning worker costs about a microsecond (see Pool in
// parallel.cc); on tiny at 2 threads 2^16 gave 3.15 ms a frame, 2^18 3.35 ms, 2^20 4.7-5.9 ms.
constexpr int64_t kMinChunkWork = int64_t(1) << 16;
inline int64_t grain_for(int64_t work) { return std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, work)); }

// Sets OpenBLAS' thread count (only when it changes).
void set_blas_threads(int threads);

// OpenBLAS' build and the kernel set it chose for this CPU, e.g. "OpenBLAS 0.3.34 DYNAMIC_ARCH ... SkylakeX".
std::string blas_config();

}  // namespace cpu
}  // namespace nfd
