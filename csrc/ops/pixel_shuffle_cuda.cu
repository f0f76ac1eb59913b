// ops::pixel_shuffle on CUDA (contract checked in ops/pixel_shuffle.cc): one thread per element of the small side
// [C r^2, H, W], copied to or from out[c, h r + i, w r + j] (unverified on a GPU).
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void pixel_shuffle_kernel(cudaops::DPtr x, cudaops::DPtr out, int R, int H, int W, bool inverse,
                                     int64_t n) {
  NFD_GRID_STRIDE(s, n) {  // s indexes the small side [C r^2, H, W]
    const int64_t w = s % W, h = (s / W) % H, cs = s / (int64_t(W) * H);
    const int64_t c = cs / (R * R), i = (cs / R) % R, j = cs % R;
    const int64_t b = (c * H * R + h * R + i) * int64_t(W) * R + w * R + j;
    if (inverse) cudaops::st(out, s, cudaops::ld(x, b));
    else cudaops::st(out, b, cudaops::ld(x, s));
  }
}
}  // namespace

void cuda::pixel_shuffle(const Context& ctx, const Tensor& x, int r, bool inverse, Tensor& out) {
  using namespace cudaops;
  const Tensor& small = inverse ? out : x;
  if (small.numel() == 0) return;
  pixel_shuffle_kernel<<<grid_1d(small.numel(), 256), 256, 0, stream_of(ctx)>>>(
      dp(x), dp(out), r, int(small.dim(1)), int(small.dim(2)), inverse, small.numel());
  check_launch("pixel_shuffle");
}

}  // namespace ops
}  // namespace nfd
