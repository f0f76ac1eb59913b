// An upper bound of the scratch memory the ops take while a session runs: the per-thread scratch
// buffers of the CPU ops (ops/cpu_common.h, scratch()) and the stream-ordered scratch of the CUDA ops
// (ops/cuda_common.cuh, Scratch). The session adds it to its arena (measured exactly) to decide, before
// allocating anything, whether it fits (runtime memory estimate). Keep it in step with the ops: each term
// names the op whose request it bounds, and tests/runtime/test_memory.py checks it against the CPU ops' measured
// high-water mark.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace nfd {
namespace ops {

// The largest shapes a frame hands the ops that take scratch, as an architecture reports them
// (Architecture::scratch_bytes_bound builds one from its config).
struct ScratchShapes {
  // The transformer: tokens of a frame, width, heads, head_dim, keys of a full cache, the widest linear output
  // with a gated residual epilogue, and the largest weight (elements: host staging of copy).
  int64_t tokens = 0, hidden = 0, heads = 0, head_dim = 0, keys = 0, widest_gated_output = 0, largest_weight = 0;
  // The decoder's convolutions (k <= 3), per resolution level: pixels and the largest channel count of the
  // level or its neighbours; the frame size; the latent's channels.
  struct ConvLevel {
    int64_t pixels = 0, channels = 0;
  };
  std::vector<ConvLevel> conv_levels;
  int64_t frame_height = 0, frame_width = 0, latent_channels = 0;
  // Frames computed in one forward (parallel speculation's k): the linears take members x tokens rows; attention
  // and the decoder run per frame.
  int64_t members = 1;
};

size_t scratch_bytes_bound(const ScratchShapes& shapes, Device device, DType dtype, int threads);

// Bytes held by the CPU ops' per-thread scratch buffers of all threads now, and the most they ever held.
size_t cpu_scratch_bytes();
size_t cpu_scratch_peak_bytes();

}  // namespace ops
}  // namespace nfd
