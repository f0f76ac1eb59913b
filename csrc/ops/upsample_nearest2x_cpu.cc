// ops::upsample_nearest2x on the CPU (contract checked in ops/upsample_nearest2x.cc): out[C, 2H, 2W] = x[C, H, W]
// repeated 2x2.
#include "ops/cpu_common.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

using namespace cpu_detail;

void upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out) {
  const int64_t C = x.dim(0), H = x.dim(1), W = x.dim(2);
  const bool bf16 = cpu_bf16("upsample_nearest2x", out);
  // A copy of elements: the bits of each, whatever the dtype.
  auto run = [&](auto* xs, auto* o) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < 2 * H; ++y)
        for (int64_t xx = 0; xx < 2 * W; ++xx) o[(c * 2 * H + y) * 2 * W + xx] = xs[(c * H + y / 2) * W + xx / 2];
  };
  if (bf16)
    run(x.ptr<bf16_t>(), out.ptr<bf16_t>());
  else
    run(x.ptr<float>(), out.ptr<float>());
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
