// out = GroupNorm(x[C,H,W]; groups, eps) * gamma[C] + beta[C], then SiLU when `silu`. One block per group;
// fp32 statistics in two passes (mean, then centred variance: no cancellation on large offsets).
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void groupnorm_kernel(cudaops::DPtr x, cudaops::DPtr gamma, cudaops::DPtr beta, float eps, bool silu,
                                 cudaops::DPtr out, int cpg, int64_t HW) {
  __shared__ float sh[33];
  const int64_t base = int64_t(blockIdx.x) * cpg * HW, n = int64_t(cpg) * HW;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += cudaops::ld(x, base + i);
  const float mean = cudaops::block_sum(s, sh) / float(n);
  float v = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float d = cudaops::ld(x, base + i) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(cudaops::block_sum(v, sh) / float(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int c = int(blockIdx.x) * cpg + int(i / HW);
    float y = (cudaops::ld(x, base + i) - mean) * rstd * cudaops::ld(gamma, c) + cudaops::ld(beta, c);
    if (silu) y = y / (1.f + expf(-y));
    cudaops::st(out, base + i, y);
  }
}
}  // namespace

void cuda::groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                     float eps, bool silu, Tensor& out) {
  using namespace cudaops;
  const char* op = "groupnorm";
  require_cuda_float(op, "x", x);
  require_cuda_float(op, "gamma", gamma);
  require_cuda_float(op, "beta", beta);
  require_cuda_float(op, "out", out);
  NFD_CHECK(x.rank() == 3, invalid_argument, std::string(op) + ": x must be [C,H,W], got " + x.describe());
  const int64_t C = x.dim(0), HW = x.dim(1) * x.dim(2);
  NFD_CHECK(groups > 0 && C % groups == 0, invalid_argument,
            std::string(op) + ": groups " + std::to_string(groups) + " must divide C of " + x.describe());
  require_numel(op, "out", out, x.numel());
  require_numel(op, "gamma", gamma, C);
  require_numel(op, "beta", beta, C);
  if (x.numel() == 0) return;
  groupnorm_kernel<<<unsigned(groups), 512, 0, stream_of(ctx)>>>(dp(x), dp(gamma), dp(beta), eps, silu, dp(out),
                                                                 int(C / groups), HW);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
