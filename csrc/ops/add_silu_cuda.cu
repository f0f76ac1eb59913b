// ops::add_silu on CUDA (contract checked in ops/add_silu.cc): out[n] = silu(a[n] + b[n]), fp32 math.
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void add_silu_kernel(cudaops::DPtr a, cudaops::DPtr b, bool has_b, cudaops::DPtr out, int64_t n) {
  NFD_GRID_STRIDE(i, n) {
    float v = has_b ? cudaops::ld(a, i) + cudaops::ld(b, i) : cudaops::ld(a, i);
    cudaops::st(out, i, v / (1.f + expf(-v)));
  }
}
}  // namespace

void cuda::add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  using namespace cudaops;
  if (out.numel() == 0) return;
  add_silu_kernel<<<grid_1d(out.numel(), 256), 256, 0, stream_of(ctx)>>>(
      dp(a), b.defined() ? dp(b) : dp(a), b.defined(), dp(out), out.numel());
  check_launch("add_silu");
}

}  // namespace ops
}  // namespace nfd
