// u8[H, W, 3] -> image[3, H, W]: u / 127.5 - 1 (division then subtraction, as the reference).
#include "ops/cuda_common.cuh"

namespace nfd {
namespace ops {
namespace {
__global__ void from_uint8_kernel(const uint8_t* frame, cudaops::DPtr img, int64_t HW) {
  NFD_GRID_STRIDE(i, 3 * HW) {  // i indexes image[3, H, W]
    const int64_t c = i / HW, p = i % HW;
    cudaops::st(img, i, __fsub_rn(__fdiv_rn(float(frame[p * 3 + c]), 127.5f), 1.f));
  }
}
}  // namespace

void cuda::from_uint8(const Context& ctx, const Tensor& frame, Tensor& image) {
  using namespace cudaops;
  const char* op = "from_uint8";
  require_cuda_float(op, "image", image);
  NFD_CHECK(frame.device == Device::cuda && frame.dtype == DType::u8 && frame.defined(), invalid_argument,
            std::string(op) + ": frame must be u8 on cuda, got " + frame.describe());
  NFD_CHECK(image.rank() == 3 && image.dim(0) == 3 && frame.rank() == 3 && frame.dim(0) == image.dim(1) &&
                frame.dim(1) == image.dim(2) && frame.dim(2) == 3,
            invalid_argument, std::string(op) + ": expected frame[H,W,3] and image[3,H,W], got " + frame.describe() +
                                  " and " + image.describe());
  const int64_t HW = image.dim(1) * image.dim(2);
  if (HW == 0) return;
  from_uint8_kernel<<<grid_1d(3 * HW, 256), 256, 0, stream_of(ctx)>>>(frame.ptr<uint8_t>(), dp(image), HW);
  check_launch(op);
}

}  // namespace ops
}  // namespace nfd
