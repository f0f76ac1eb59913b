// CUDA attention: the merge of split-KV partials by their log-sum-exp, for our kernels, cuDNN's key batches and
// FlashInfer's Hopper key ranges (its FA2 single prefill merges its own: cascade.cuh).
// A part of ops/attention_cuda.cu (included there only, inside its anonymous namespace: one translation unit, so
// the kernels' templates are instantiated once); ops/attention_cuda.cu has the op's description and dispatch.
#pragma once

#include "ops/attention_cuda_common.cuh"
#include "ops/attention_flashinfer_layout.h"

namespace nfd {
namespace ops {
namespace {

// The log-sum-exp (log2 units) of split s's row for our kernels' partials: -inf for a split without keys.
struct PartialsLse {
  const float* lse;
  __device__ float operator()(int /*split*/, int64_t row) const { return lse[row]; }
};

// Where split s keeps its row for query n of head h: [splits, H, N] (our kernels' partials, cuDNN's batches) ...
struct HeadMajorRows {
  int N, H;
  __device__ int64_t operator()(int s, int h, int n) const { return (int64_t(s) * H + h) * N + n; }
};
// ... or [splits * N, H] (FlashInfer's ragged requests, tile::fi90::partial_row).
struct TokenMajorRows {
  int N, H;
  __device__ int64_t operator()(int s, int h, int n) const { return tile::fi90::partial_row(s, h, n, N, H); }
};

// One warp per (head, token): merges the splits' normalised rows o [rows, hd] (P: float for our kernels, the
// output dtype for cuDNN's and FlashInfer's) by their log-sum-exp, lse(split, row) in log2 units, the rows where
// rows(split, head, token) says. A split with lse = -inf (no keys) has weight 0 and its row is not read (it may
// never have been written).
template <typename T, typename P, typename Lse, typename Rows>
__global__ void attention_combine_kernel(const P* o, Lse lse, Rows rows, T* out, int N, int H, int hd, int splits) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N * H) return;
  const int h = warp / N, n = warp % N;
  float lse_max = -INFINITY;
  for (int s = 0; s < splits; ++s) lse_max = fmaxf(lse_max, lse(s, rows(s, h, n)));
  float wsum = 0.f;
  for (int s = 0; s < splits; ++s) wsum += tile::mma::lse_weight(lse(s, rows(s, h, n)), lse_max);
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  for (int d = lane; d < hd; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t row = rows(s, h, n);
      const float w = tile::mma::lse_weight(lse(s, row), lse_max);
      if (w > 0.f) acc += w * cudaops::to_f(o[row * hd + d]);
    }
    out[int64_t(n) * H * hd + h * hd + d] = cudaops::from_f<T>(acc * inv);
  }
}

}  // namespace
}  // namespace ops
}  // namespace nfd
