// CUDA attention: the merge of split-KV partials by their log-sum-exp (FlashInfer keeps its own: cascade.cuh).
// A part of ops/attention_cuda.cu (included there only, inside its anonymous namespace: one translation unit, so
// the kernels' templates are instantiated once); ops/attention_cuda.cu has the op's description and dispatch.
#pragma once

#include "ops/attention_cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {

// One warp per (head, token): merges the splits' normalised rows by their log-sum-exp. A split with lse = -inf
// (no keys) has weight 0 and its row is not read (it was never written).
template <typename T>
__global__ void attention_combine_kernel(Partials part, T* out, int N, int H, int hd, int splits) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N * H) return;
  const int h = warp / N, n = warp % N;
  float lse_max = -INFINITY;
  for (int s = 0; s < splits; ++s) lse_max = fmaxf(lse_max, part.lse[(int64_t(s) * H + h) * N + n]);
  float wsum = 0.f;
  for (int s = 0; s < splits; ++s) wsum += tile::mma::lse_weight(part.lse[(int64_t(s) * H + h) * N + n], lse_max);
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  for (int d = lane; d < hd; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t row = (int64_t(s) * H + h) * N + n;
      const float w = tile::mma::lse_weight(part.lse[row], lse_max);
      if (w > 0.f) acc += w * part.o[row * hd + d];
    }
    out[int64_t(n) * H * hd + h * hd + d] = cudaops::from_f<T>(acc * inv);
  }
}

}  // namespace
}  // namespace ops
}  // namespace nfd
