// A plain shared-memory tiled GEMM on CUDA cores, generic over how A and B elements are fetched and how each
// result is written. Used where CUTLASS's tensor-op path does not apply: fp32 (debug dtype), shapes whose K or
// N is not a multiple of 8, mixed dtypes, and the conv2d implicit GEMM (B = im2col gathered on the fly).
//   C[m, n] = sum_k A(m, k) * B(k, n);  epi(m, n, acc) writes the result.
// 64x64 tile, K step 16, 256 threads, 4x4 results per thread, fp32 accumulation.
#pragma once

#include "ops/cuda_common.cuh"

namespace nfd {
namespace cudaops {

constexpr int kSimtTile = 64, kSimtK = 16, kSimtThreads = 256;

template <class LoadA, class LoadB, class Epi>
__global__ void __launch_bounds__(kSimtThreads) simt_gemm_kernel(int M, int N, int K, LoadA la, LoadB lb, Epi epi) {
  __shared__ float As[kSimtK][kSimtTile + 4];  // As[k][m]: transposed so the inner loop reads rows
  __shared__ float Bs[kSimtK][kSimtTile + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * kSimtTile, n0 = blockIdx.x * kSimtTile;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kSimtK) {
    // 64x16 elements of A and 16x64 of B per step: 4 each per thread; consecutive threads walk k for A
    // (x rows are contiguous in k) and n for B.
    for (int r = 0; r < 4; ++r) {
      const int e = tid + r * kSimtThreads;
      const int ak = e % kSimtK, am = e / kSimtK;
      As[ak][am] = (m0 + am < M && k0 + ak < K) ? la(m0 + am, k0 + ak) : 0.f;
      const int bn = e % kSimtTile, bk = e / kSimtTile;
      Bs[bk][bn] = (n0 + bn < N && k0 + bk < K) ? lb(k0 + bk, n0 + bn) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSimtK; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = As[k][ty + 16 * i];
        b[i] = Bs[k][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) epi(m, n, acc[i][j]);
    }
}

template <class LoadA, class LoadB, class Epi>
void simt_gemm(int M, int N, int K, LoadA la, LoadB lb, Epi epi, cudaStream_t s, const char* what) {
  if (M <= 0 || N <= 0) return;
  dim3 grid((N + kSimtTile - 1) / kSimtTile, (M + kSimtTile - 1) / kSimtTile);
  NFD_CHECK(grid.y <= 65535u, invalid_argument, std::string(what) + ": M too large for the SIMT GEMM");
  simt_gemm_kernel<<<grid, kSimtThreads, 0, s>>>(M, N, K, la, lb, epi);
  check_launch(what);
}

__device__ __forceinline__ float gelu_tanh(float x) {
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

// The exact GELU x / 2 (1 + erf(x / sqrt 2)).
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

}  // namespace cudaops
}  // namespace nfd
