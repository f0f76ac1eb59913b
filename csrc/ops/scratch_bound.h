// An upper bound of the scratch memory the ops take while a session of `cfg` runs: the per-thread scratch
// buffers of the CPU ops (ops/cpu_common.h, scratch()) and the stream-ordered scratch of the CUDA ops
// (ops/cuda_common.cuh, Scratch). The session adds it to its arena (measured exactly) to decide, before
// allocating anything, whether it fits (runtime memory estimate). Keep it in step with the ops: each term
// names the op whose request it bounds, and tests/test_memory.py checks it against the CPU ops' measured
// high-water mark.
#pragma once

#include <cstddef>

#include "core/config.h"
#include "core/tensor.h"

namespace nfd {
namespace ops {

size_t scratch_bytes_bound(const Config& cfg, Device device, DType dtype, int threads);

// Bytes held by the CPU ops' per-thread scratch buffers of all threads now, and the most they ever held.
size_t cpu_scratch_bytes();
size_t cpu_scratch_peak_bytes();

}  // namespace ops
}  // namespace nfd
