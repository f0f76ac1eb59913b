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
  const int64_t H = image.dim(1), W = image.dim(2);
  const bool bf16 = cpu_bf16("to_uint8", image);
  const bool truncated = pixels == Pixels::truncated, unit = pixels == Pixels::unit;
  auto run = [&](auto* x) {
    uint8_t* o = out.ptr<uint8_t>();
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t i = 0; i < H * W; ++i) {
        const float xi = to_float(x[c * H * W + i]);
        float u;
        if (unit) {  // round(clamp(x, 0, 1) * 255), halves to even (torch.round)
          u = std::nearbyint((xi < 0.f ? 0.f : (xi > 1.f ? 1.f : xi)) * 255.f);
        } else if (truncated) {
          const float v = (xi + 1.f) / 2.f;
          u = std::floor((v < 0.f ? 0.f : (v > 1.f ? 1.f : v)) * 255.f);
        } else {
          u = std::floor((xi + 1.f) * 127.5f + 0.5f);
        }
        u = std::isnan(u) ? 0.f : std::min(std::max(u, 0.f), 255.f);  // NaN would be UB in the cast
        o[i * 3 + c] = uint8_t(u);
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
