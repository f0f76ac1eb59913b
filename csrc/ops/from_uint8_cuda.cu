// ops::from_uint8 on CUDA (contract checked in ops/from_uint8.cc): u8[H, W, 3] -> image[3, H, W]: u / 127.5 - 1
// (rounded) or (u / 255) * 2 - 1 (truncated), each in its reference's order.
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void from_uint8_kernel(const uint8_t* frame, cudaops::DPtr img, int64_t HW, bool truncated, bool unit) {
  NFD_GRID_STRIDE(i, 3 * HW) {  // i indexes image[3, H, W]
    const int64_t c = i / HW, p = i % HW;
    const float u = float(frame[p * 3 + c]);
    cudaops::st(img, i, unit ? __fdiv_rn(u, 255.f)
                             : truncated ? __fsub_rn(__fmul_rn(__fdiv_rn(u, 255.f), 2.f), 1.f)
                                         : __fsub_rn(__fdiv_rn(u, 127.5f), 1.f));
  }
}
}  // namespace

void cuda::from_uint8(const Context& ctx, const Tensor& frame, Tensor& image, Pixels pixels) {
  using namespace cudaops;
  const char* op = "from_uint8";
  const int64_t HW = image.dim(1) * image.dim(2);
  if (HW == 0) return;
  from_uint8_kernel<<<grid_1d(3 * HW, 256), 256, 0, stream_of(ctx)>>>(frame.ptr<uint8_t>(), dp(image), HW,
                                                                     pixels == Pixels::truncated, pixels == Pixels::unit);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
