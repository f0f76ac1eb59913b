// ops::softcap on CUDA (contract checked in ops/softcap.cc): out = tanh(x / cap) * cap in fp32 (unverified on a GPU).
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void softcap_kernel(cudaops::DPtr x, float cap, cudaops::DPtr out, int64_t n) {
  NFD_GRID_STRIDE(i, n) { cudaops::st(out, i, __fmul_rn(tanhf(__fdiv_rn(cudaops::ld(x, i), cap)), cap)); }
}
}  // namespace

void cuda::softcap(const Context& ctx, const Tensor& x, float cap, Tensor& out) {
  using namespace cudaops;
  if (out.numel() == 0) return;
  softcap_kernel<<<grid_1d(out.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(x), cap, dp(out), out.numel());
  check_launch("softcap");
}

}  // namespace ops
}  // namespace nfd
