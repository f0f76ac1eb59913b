// ops::to_uint8 on CUDA (contract checked in ops/to_uint8.cc):
// image[3, H, W] in [-1, 1] -> u8[H, W, 3]: clamp(floor((x + 1) * 127.5 + 0.5), 0, 255) (rounded) or
// floor(clamp((x + 1) / 2, 0, 1) * 255) (truncated; unverified on a GPU).
// Explicit _rn intrinsics keep the compiler from fusing into an FMA, so results match the CPU bit for bit.
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void to_uint8_kernel(cudaops::DPtr img, uint8_t* out, int64_t HW, bool truncated, bool unit) {
  NFD_GRID_STRIDE(i, 3 * HW) {  // i indexes out[H, W, 3]
    const int64_t c = i % 3, p = i / 3;
    float v;
    if (unit) {  // round half to even (rintf), unverified on a GPU
      v = rintf(__fmul_rn(fminf(fmaxf(cudaops::ld(img, c * HW + p), 0.f), 1.f), 255.f));
    } else if (truncated) {
      const float h = __fdiv_rn(__fadd_rn(cudaops::ld(img, c * HW + p), 1.f), 2.f);
      v = floorf(__fmul_rn(fminf(fmaxf(h, 0.f), 1.f), 255.f));
    } else {
      v = floorf(__fadd_rn(__fmul_rn(__fadd_rn(cudaops::ld(img, c * HW + p), 1.f), 127.5f), 0.5f));
    }
    v = fminf(fmaxf(v, 0.f), 255.f);  // fmaxf maps NaN to 0
    out[i] = uint8_t(v);
  }
}
}  // namespace

void cuda::to_uint8(const Context& ctx, const Tensor& image, Tensor& out, Pixels pixels) {
  using namespace cudaops;
  const char* op = "to_uint8";
  const int64_t HW = image.dim(1) * image.dim(2);
  if (HW == 0) return;
  to_uint8_kernel<<<grid_1d(3 * HW, 256), 256, 0, stream_of(ctx)>>>(dp(image), out.ptr<uint8_t>(), HW,
                                                                 pixels == Pixels::truncated, pixels == Pixels::unit);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
