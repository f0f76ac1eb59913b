// ops::from_uint8 on the CPU (contract checked in ops/from_uint8.cc): u8[H, W, 3] -> image[3, H, W] = u / 127.5 - 1
// (rounded), (u / 255) * 2 - 1 (truncated) or u / 255 (unit), in the reference's order; fp32 arithmetic, a bf16
// image rounded once.
#include <type_traits>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image, Pixels pixels) {
  const int64_t H = frame.dim(0), W = frame.dim(1);
  const bool bf16 = cpu_bf16("from_uint8", image);
  auto run = [&](auto* x) {
    using T = std::remove_pointer_t<decltype(x)>;
    const uint8_t* u = frame.ptr<uint8_t>();
    if (pixels == Pixels::unit) {
      for (int64_t i = 0; i < H * W; ++i)
        for (int64_t c = 0; c < 3; ++c) x[c * H * W + i] = from_float<T>(float(u[i * 3 + c]) / 255.f);
    } else if (pixels == Pixels::truncated) {
      for (int64_t i = 0; i < H * W; ++i)
        for (int64_t c = 0; c < 3; ++c) x[c * H * W + i] = from_float<T>((float(u[i * 3 + c]) / 255.f) * 2.f - 1.f);
    } else {
      for (int64_t i = 0; i < H * W; ++i)
        for (int64_t c = 0; c < 3; ++c) x[c * H * W + i] = from_float<T>(float(u[i * 3 + c]) / 127.5f - 1.f);
    }
  };
  if (bf16)
    run(image.ptr<bf16_t>());
  else
    run(image.ptr<float>());
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
