// ops::gated_add on CUDA (contract checked in ops/gated_add.cc): y[M, N] += gate[N] * x[M, N], fp32 math.
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void gated_add_kernel(cudaops::DPtr x, cudaops::DPtr gate, cudaops::DPtr y, int64_t n, int64_t cols) {
  NFD_GRID_STRIDE(i, n) { cudaops::st(y, i, cudaops::ld(y, i) + cudaops::ld(gate, i % cols) * cudaops::ld(x, i)); }
}
}  // namespace

void cuda::gated_add(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y) {
  using namespace cudaops;
  if (y.numel() == 0) return;
  gated_add_kernel<<<grid_1d(y.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(x), dp(gate), dp(y), y.numel(), y.dim(1));
  check_launch("gated_add");
}

}  // namespace ops
}  // namespace nfd
