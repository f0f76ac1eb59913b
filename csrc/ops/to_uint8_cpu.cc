// ops::to_uint8 on the CPU (contract checked in ops/to_uint8.cc):
// image[3, H, W] in [-1, 1] ([0, 1] for unit) -> u8[H, W, 3]; the float expression of each Pixels mode is evaluated
// in its reference's order (rounded: python/nfd_rt/reference/model.py, truncated: reference/oasis.py, unit:
// reference/waypoint.py, rounding half to even in the default floating-point rounding mode).
#include <cmath>

#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void to_uint8(const Context& ctx, const Tensor& image, Tensor& out, Pixels pixels) {
  fp32_only("to_uint8", image);
  const int64_t H = image.dim(1), W = image.dim(2);
  const float* x = image.ptr<float>();
  uint8_t* o = out.ptr<uint8_t>();
  const bool truncated = pixels == Pixels::truncated, unit = pixels == Pixels::unit;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < H * W; ++i) {
      float u;
      if (unit) {  // round(clamp(x, 0, 1) * 255), halves to even (torch.round)
        const float v = x[c * H * W + i];
        u = std::nearbyint((v < 0.f ? 0.f : (v > 1.f ? 1.f : v)) * 255.f);
      } else if (truncated) {
        const float v = (x[c * H * W + i] + 1.f) / 2.f;
        u = std::floor((v < 0.f ? 0.f : (v > 1.f ? 1.f : v)) * 255.f);
      } else {
        u = std::floor((x[c * H * W + i] + 1.f) * 127.5f + 0.5f);
      }
      u = std::isnan(u) ? 0.f : std::min(std::max(u, 0.f), 255.f);  // NaN would be UB in the cast
      o[i * 3 + c] = uint8_t(u);
    }
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
