// ops::upsample_nearest2x on CUDA (contract checked in ops/upsample_nearest2x.cc): out[C, 2H, 2W] = x[C, H, W] repeated
// 2x2.
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void upsample_kernel(cudaops::DPtr x, cudaops::DPtr out, int H, int W, int64_t n_out) {
  NFD_GRID_STRIDE(i, n_out) {
    const int64_t W2 = 2 * W, H2 = 2 * H;
    const int64_t ox = i % W2, oy = (i / W2) % H2, c = i / (W2 * H2);
    cudaops::st(out, i, cudaops::ld(x, (c * H + oy / 2) * W + ox / 2));
  }
}
}  // namespace

void cuda::upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out) {
  using namespace cudaops;
  const char* op = "upsample_nearest2x";
  if (out.numel() == 0) return;
  upsample_kernel<<<grid_1d(out.numel(), 256), 256, 0, stream_of(ctx)>>>(dp(x), dp(out), int(x.dim(1)),
                                                                        int(x.dim(2)), out.numel());
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
