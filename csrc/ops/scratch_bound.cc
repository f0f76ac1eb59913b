#include "ops/scratch_bound.h"

#include <algorithm>
#include <cstdint>

#include "backends/cpu/parallel.h"
#include "ops/conv2d_layout.h"
#include "ops/cpu_common.h"

namespace nfd {
namespace ops {

namespace {

// Floats one thread's scratch(…, 0) may grow to on the CPU.
int64_t cpu_thread_floats(const ScratchShapes& s) {
  const int64_t N = s.tokens, D = s.hidden, hd = s.head_dim, L = s.keys;
  int64_t dit = std::max({N * L,                // attention, sgemm path: scores of one head
                          (hd + L) * 16,        // attention, register path: one block of 16 queries
                          N * D,                // linear, gated residual: the product before the epilogue
                          N * hd});             // rope_qkv_split: cos/sin tables
  // linear over every member's rows (parallel speculation's k frames: M = members x tokens): with that many rows it
  // runs in kMaxChunks column blocks (backends/cpu/parallel.h), each an M x ceil(width / kMaxChunks) product in
  // scratch (oneDNN's dense destination, or a gated residual's product). width: at most the widest weight's rows.
  const int64_t widest = D > 0 ? std::max(D, s.largest_weight / D) : 0;
  dit = std::max(dit, std::max<int64_t>(s.members, 1) * N * ((widest + ::nfd::cpu::kMaxChunks - 1) /
                                                              ::nfd::cpu::kMaxChunks));
  int64_t cmax = s.latent_channels;
  for (const auto& lv : s.conv_levels) cmax = std::max(cmax, lv.channels);
  const int64_t W = s.frame_width + 2, c = cmax;
  // Banded convolutions hold at most cpu_detail::kBandFloats of band data, or one row's worth when a row is larger:
  // direct conv2d 3 * Cin * (W + 2); Winograd 16 * (Cin + Cout) * W / 2; upsample2x_conv2d 4 * (4 Cin + Cout) * W;
  // im2col 9 * Cin * W. Winograd and upsample2x_conv2d also keep their transformed weights (16 Cout Cin).
  int64_t vae = cpu_detail::kBandFloats + 20 * c * W + 16 * c * c + 16 * 64 + W;
  return std::max(dit, vae);
}

}  // namespace

size_t scratch_bytes_bound(const ScratchShapes& s, Device device, DType dtype, int threads) {
  if (device == Device::cpu) {
    // scratch(…, 1): 4 rows of the padded image (Winograd input transform), or a head's visible keys and values
    // packed contiguous (attention, sgemm path: 2 L hd).
    int64_t per_thread = cpu_thread_floats(s) + std::max<int64_t>(4 * (s.frame_width + 2), 2 * s.keys * s.head_dim);
    if (dtype != DType::bf16) return size_t(std::max(threads, 1)) * size_t(per_thread) * sizeof(float);
    // bf16 attention: beside the scores, O and the row sums (N hd + N); in scratch(…, 1) the register path's fp32
    // keys and values plus a block of queries and outputs (2 L hd + 32 hd).
    per_thread += s.tokens * s.head_dim + s.tokens + 32 * s.head_dim;
    // The calling thread's fp32 copies of a bf16 convolution (cpu_detail::as_f32): input, residual, output
    // (3 images of a level) and the weights (9 c^2) and bias.
    int64_t widened = 3 * int64_t(s.frame_height) * s.frame_width;  // the decoder's RGB output and conv_out's input
    for (const auto& lv : s.conv_levels)
      widened = std::max(widened, 3 * lv.pixels * lv.channels + 9 * lv.channels * lv.channels + lv.channels);
    return (size_t(std::max(threads, 1)) * size_t(per_thread) + size_t(widened)) * sizeof(float);
  }
  // CUDA: stream-ordered scratch lives for one op; the pool keeps the largest. A session decodes on a second
  // stream beside the cache-write pass (runtime/sampler.cc), so one DiT op and one decoder op may hold scratch at
  // the same time: the bound is the largest of each, added. es = bytes per element.
  const int64_t es = int64_t(dtype_size(dtype));
  const int64_t N = s.tokens, D = s.hidden;
  int64_t dit = 64 * N * (D + 2 * s.heads) * 4;  // attention: partials of up to 64 KV splits (fp32)
  // FlashInfer attention: its partials (output dtype) and log-sum-exp for up to ceil(keys / 256) chunks.
  dit = std::max(dit, (s.keys + 255) / 256 * N * (D * es + s.heads * 4) + 16);
  // cuDNN attention: up to 16 key batches of q copies and O partials (dtype), their log-sum-exp, two length
  // arrays, and cuDNN's workspace (at most 32 MiB: larger plans are refused, ops/attention_cuda_cudnn.cc).
  dit = std::max(dit, 16 * N * (2 * D * es + s.heads * 4) + 2 * 256 + (int64_t(32) << 20));
  // FlashInfer's Hopper attention: up to 16 key ranges of q copies and partials (dtype), their log-sum-exp, and
  // its work list (7 ints an item, 16 ranges x heads x 192-row query tiles, plus one per SM: under 1 MiB).
  dit = std::max(dit, 16 * N * (2 * D * es + s.heads * 4) + (int64_t(1) << 20));
  // attention_prepare's checked choice (ops/choice_check_cuda.cuh), at open: its own q, K and V of a full cache,
  // the reference's and a candidate's outputs, beside that candidate's scratch (any of the above).
  dit += 2 * s.keys * D * es + 3 * N * D * es;
  // linear with gated residual: the product over every member's rows, plus a cuBLASLt workspace (at most 32 MiB)
  // beside it.
  dit = std::max(dit, std::max<int64_t>(s.members, 1) * N * s.widest_gated_output * es + (int64_t(32) << 20));
  int64_t vae = 0;
  for (const auto& lv : s.conv_levels) {
    const int64_t pixels = lv.pixels, c = lv.channels;
    // conv2d / upsample2x_conv2d at this level, k <= 3: tensor cores (NHWC input, filters, product; an
    // upsampled input has this level's pixels; conv_out's 3 outputs pad to 8 <= c), or CUDA cores after an
    // upsample into a [C, H, W] scratch.
    // cuDNN's convolution runs there too, with its workspace (at most 64 MiB: larger plans are refused,
    // ops/conv2d_cuda_cudnn.cc) beside the NHWC buffers.
    // At a shape's first call, beside one engine's scratch, the checked choice's input, residual, reference and
    // output (ops/choice_check_cuda.cuh): 4 images of the level.
    vae = std::max(vae, conv_layout::ScratchLayout(pixels, c, pixels, c, 3, es).total + (int64_t(64) << 20) +
                            4 * pixels * c * es);
    vae = std::max(vae, pixels * c * es);
    // NFD_RT_CONV=im2col: the columns [P, 9 Cin] + the product [P, Cout] (+ the upsampled image before them).
    vae = std::max(vae, pixels * (10 * c + c) * es);
  }
  int64_t need = dit + vae;
  // copy: host data staged through scratch, at most the largest weight or a frame's image.
  need = std::max(need, s.largest_weight * 4);
  need = std::max(need, int64_t(3) * s.frame_height * s.frame_width * 4);
  return size_t(need);
}

size_t cpu_scratch_bytes() { return cpu_detail::scratch_counters().now.load(); }
size_t cpu_scratch_peak_bytes() { return cpu_detail::scratch_counters().peak.load(); }

}  // namespace ops
}  // namespace nfd
