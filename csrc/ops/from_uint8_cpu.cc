// u8[H, W, 3] -> image[3, H, W] = u / 127.5 - 1.
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image) {
  expect("from_uint8", "frame", frame, {-1, -1, 3}, DType::u8);
  const int64_t H = frame.dim(0), W = frame.dim(1);
  expect("from_uint8", "image", image, {3, H, W});
  const uint8_t* u = frame.ptr<uint8_t>();
  float* x = image.ptr<float>();
  for (int64_t i = 0; i < H * W; ++i)
    for (int64_t c = 0; c < 3; ++c) x[c * H * W + i] = float(u[i * 3 + c]) / 127.5f - 1.f;
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
