// out = GroupNorm(x[C,H,W]; groups, eps) * gamma[C] + beta[C], then SiLU when `silu`.
// Spread over at least ~2x the SM count in blocks (the VAE has 32 groups, an H100 132 SMs): each group's
// cpg*H*W values are cut into `chunks` ranges (tile::chunk_range). Kernel 1: a block per (group, chunk) computes
// its range's count, mean and centred sum of squares (two passes over a range small enough to stay in cache).
// Kernel 2: a block per (group, chunk) merges its group's chunk statistics (tile::moments_merge, Chan's pairwise
// update: as exact as one two-pass over the group) and normalises its range. fp32 statistics throughout.
#include <algorithm>

#include "ops/attention_math.h"
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
constexpr int kThreads = 256;

__global__ void groupnorm_stats_kernel(cudaops::DPtr x, int64_t n, int chunks, tile::MomentState* part) {
  __shared__ float sh[33];
  const int g = blockIdx.x, c = blockIdx.y;
  int64_t b, e;
  tile::chunk_range(n, chunks, c, &b, &e);
  const int64_t base = int64_t(g) * n;
  float s = 0.f;
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) s += cudaops::ld(x, base + i);
  const float count = float(e - b);
  const float total = cudaops::block_sum(s, sh);
  const float mean = count > 0.f ? total / count : 0.f;
  float v = 0.f;
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) {
    const float d = cudaops::ld(x, base + i) - mean;
    v += d * d;
  }
  const float m2 = cudaops::block_sum(v, sh);
  if (threadIdx.x == 0) part[int64_t(g) * chunks + c] = tile::MomentState{count, mean, m2};
}

__global__ void groupnorm_apply_kernel(cudaops::DPtr x, cudaops::DPtr gamma, cudaops::DPtr beta, float eps,
                                       bool silu, cudaops::DPtr out, int cpg, int64_t HW, int chunks,
                                       const tile::MomentState* part) {
  const int g = blockIdx.x, c = blockIdx.y;
  const int64_t n = int64_t(cpg) * HW;
  tile::MomentState st{0.f, 0.f, 0.f};  // every thread merges the group's (few) chunks: no barrier needed
  for (int k = 0; k < chunks; ++k) st = tile::moments_merge(st, part[int64_t(g) * chunks + k]);
  const float rstd = rsqrtf(st.m2 / st.n + eps);
  int64_t b, e;
  tile::chunk_range(n, chunks, c, &b, &e);
  const int64_t base = int64_t(g) * n;
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) {
    const int ch = g * cpg + int(i / HW);
    float y = (cudaops::ld(x, base + i) - st.mean) * rstd * cudaops::ld(gamma, ch) + cudaops::ld(beta, ch);
    if (silu) y = y / (1.f + expf(-y));
    cudaops::st(out, base + i, y);
  }
}
}  // namespace

void cuda::groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                     float eps, bool silu, Tensor& out) {
  using namespace cudaops;
  const char* op = "groupnorm";
  const int64_t C = x.dim(0), HW = x.dim(1) * x.dim(2);
  if (x.numel() == 0) return;
  const int64_t n = (C / groups) * HW;  // values per group
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  // >= 2 blocks per SM in all, each chunk >= 2048 values (else one block per group does it), at most 64 chunks.
  const int chunks = int(std::max<int64_t>(1, std::min<int64_t>({(2 * sms + groups - 1) / groups, n / 2048, 64})));
  cudaStream_t s = stream_of(ctx);
  Scratch part(size_t(groups) * chunks * sizeof(tile::MomentState), s);
  const dim3 grid{unsigned(groups), unsigned(chunks)};
  groupnorm_stats_kernel<<<grid, kThreads, 0, s>>>(dp(x), n, chunks, part.get<tile::MomentState>());
  check_launch("groupnorm (statistics)");
  groupnorm_apply_kernel<<<grid, kThreads, 0, s>>>(dp(x), dp(gamma), dp(beta), eps, silu, dp(out), int(C / groups),
                                                   HW, chunks, part.get<tile::MomentState>());
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
