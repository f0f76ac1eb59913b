// CUDA attention: the merge of split-KV partials by their log-sum-exp, for our kernels and for cuDNN's key batches
// (FlashInfer keeps its own: cascade.cuh).
// A part of ops/attention_cuda.cu (included there only, inside its anonymous namespace: one translation unit, so
// the kernels' templates are instantiated once); ops/attention_cuda.cu has the op's description and dispatch.
#pragma once

#include "ops/attention_cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {

// The log-sum-exp (log2 units) of split s's row for our kernels' partials: -inf for a split without keys.
struct PartialsLse {
  const float* lse;
  __device__ float operator()(int /*split*/, int64_t row) const { return lse[row]; }
};

// One warp per (head, token): merges the splits' normalised rows o [splits, H, N, hd] (P: float for our kernels,
// the output dtype for cuDNN's) by their log-sum-exp, lse(split, row) in log2 units. A split with lse = -inf
// (no keys) has weight 0 and its row is not read (it may never have been written).
template <typename T, typename P, typename Lse>
__global__ void attention_combine_kernel(const P* o, Lse lse, T* out, int N, int H, int hd, int splits) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N * H) return;
  const int h = warp / N, n = warp % N;
  float lse_max = -INFINITY;
  for (int s = 0; s < splits; ++s) lse_max = fmaxf(lse_max, lse(s, (int64_t(s) * H + h) * N + n));
  float wsum = 0.f;
  for (int s = 0; s < splits; ++s) wsum += tile::mma::lse_weight(lse(s, (int64_t(s) * H + h) * N + n), lse_max);
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  for (int d = lane; d < hd; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t row = (int64_t(s) * H + h) * N + n;
      const float w = tile::mma::lse_weight(lse(s, row), lse_max);
      if (w > 0.f) acc += w * cudaops::to_f(o[row * hd + d]);
    }
    out[int64_t(n) * H * hd + h * hd + d] = cudaops::from_f<T>(acc * inv);
  }
}

}  // namespace
}  // namespace ops
}  // namespace nfd
