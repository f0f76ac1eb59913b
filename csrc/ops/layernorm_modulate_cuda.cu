// ops::layernorm_modulate on CUDA (contract checked in ops/layernorm_modulate.cc):
// out[M,D] = Norm(x; eps) * (scale_offset + scale) + shift. One block per row; mean and variance in fp32 with two
// passes over the row (the row stays in L1/L2, D <= a few thousand); the RMSNorm takes mean 0 (one pass of squares).
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void layernorm_modulate_kernel(cudaops::DPtr x, cudaops::DPtr shift, cudaops::DPtr scale, float eps,
                                          float scale_offset, cudaops::DPtr out, int D, bool rms) {
  __shared__ float sh[33];
  const int64_t base = int64_t(blockIdx.x) * D;
  float s = 0.f;
  if (!rms)
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += cudaops::ld(x, base + i);
  const float mean = rms ? 0.f : cudaops::block_sum(s, sh) / D;
  float v = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float d = cudaops::ld(x, base + i) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(cudaops::block_sum(v, sh) / D + eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float y = (cudaops::ld(x, base + i) - mean) * rstd;
    cudaops::st(out, base + i, y * (scale_offset + cudaops::ld(scale, i)) + cudaops::ld(shift, i));
  }
}
}  // namespace

void cuda::layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale,
                              float eps, Tensor& out, float scale_offset, Norm norm) {
  using namespace cudaops;
  const char* op = "layernorm_modulate";
  const int64_t M = x.dim(0), D = x.dim(1);
  if (M == 0 || D == 0) return;
  layernorm_modulate_kernel<<<unsigned(M), 256, 0, stream_of(ctx)>>>(dp(x), dp(shift), dp(scale), eps,
                                                                    scale_offset, dp(out), int(D), norm == Norm::rms);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
