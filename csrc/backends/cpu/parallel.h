// parallel_for for the CPU ops: splits [0, n) into chunks and runs them on a process-wide pool of worker threads
// that live for the whole process. Spawning threads per call cost more than the small ops of one frame (tens of
// microseconds each, hundreds of ops a frame).
//
// Determinism: the chunks are a function of the shape alone (n and the op's grain), never of the thread count or
// of how many workers are free. Every chunk runs the same code on the same sub-problem (the same sgemm call, the
// same vector loop with the same tail) whoever runs it, so a seed gives bitwise the same video with 1, 2 or 64
// threads and with other sessions running beside it (tests/runtime/test_determinism.py).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

namespace nfd {
namespace cpu {

// At most this many chunks per call, so a large op is not cut into slivers; a power of two, so the chunks
// divide evenly among 1, 2, 4, 8 or 16 threads.
constexpr int64_t kMaxChunks = 16;

// The chunk length for n items of which a chunk must hold at least `grain`: the largest power-of-two chunk count
// <= kMaxChunks that keeps chunks >= grain, then n split evenly. Depends on (n, grain) only.
inline int64_t chunk_length(int64_t n, int64_t grain) {
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = 1;
  while (chunks * 2 <= kMaxChunks && n / (chunks * 2) >= grain) chunks *= 2;
  return (n + chunks - 1) / chunks;
}

// Runs fn(begin, end) for the chunks [c * chunk, min(n, (c + 1) * chunk)) on the pool (the caller takes chunks
// too) with at most `threads` threads, and waits for all; the first exception thrown by a chunk is rethrown.
// Runs the same chunks one after another on the caller when called from inside another parallel_for or while the
// pool serves another caller (correct, only serial).
void parallel_for_impl(int threads, int64_t chunk, int64_t n, const std::function<void(int64_t, int64_t)>& fn);

// fn(begin, end) on the fixed chunks of [0, n) (chunk_length(n, grain)), on up to `threads` threads.
template <typename Fn>
void parallel_for(int threads, int64_t n, Fn fn, int64_t grain = 1) {
  if (n <= 0) return;
  const int64_t chunk = chunk_length(n, grain);
  if (chunk >= n) return fn(int64_t(0), n);  // no std::function, no pool: the common small case
  if (threads <= 1) {
    for (int64_t b = 0; b < n; b += chunk) fn(b, std::min(n, b + chunk));
    return;
  }
  parallel_for_impl(threads, chunk, n, fn);
}

// The grain for items that each cost about `work` element operations: a chunk should hold at least
// kMinChunkWork of them (10-20 us). Handing a chunk to a spinning worker costs about a microsecond (see Pool in
// parallel.cc); on tiny at 2 threads 2^16 gave 3.15 ms a frame, 2^18 3.35 ms, 2^20 4.7-5.9 ms.
constexpr int64_t kMinChunkWork = int64_t(1) << 16;
inline int64_t grain_for(int64_t work) { return std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, work)); }

}  // namespace cpu
}  // namespace nfd
