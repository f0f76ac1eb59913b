// ops::pixel_shuffle: x[C r^2, H, W] -> out[C, H r, W r] (or back, inverse: pixel unshuffle), the channel order of
// PyTorch's F.pixel_shuffle / F.pixel_unshuffle (math in ops/ops.h). The contract is checked here; the backends
// only compute.
#include <string>

#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void pixel_shuffle(const Context& ctx, const Tensor& x, int r, bool inverse, Tensor& out) {
  const Contract c("pixel_shuffle");
  c.defined({{"x", x}, {"out", out}});
  c.check(r >= 1, "r must be >= 1, got " + std::to_string(r));
  c.shape({"x", x}, {-1, -1, -1}, inverse ? "C, H r, W r" : "C r^2, H, W");
  const int64_t R = r;
  if (inverse) {
    c.check(x.dim(1) % R == 0 && x.dim(2) % R == 0, "x's height and width must be multiples of r = " +
                                                        std::to_string(r) + ", got " + x.describe());
    c.shape({"out", out}, {x.dim(0) * R * R, x.dim(1) / R, x.dim(2) / R}, "C r^2, H, W");
  } else {
    c.check(x.dim(0) % (R * R) == 0, "x's channels must be a multiple of r^2 = " + std::to_string(R * R) +
                                         ", got " + x.describe());
    c.shape({"out", out}, {x.dim(0) / (R * R), x.dim(1) * R, x.dim(2) * R}, "C, H r, W r");
  }
  c.float_operands({{"out", out}, {"x", x}});
  c.disjoint({"x", x}, {"out", out});
  NFD_DISPATCH(pixel_shuffle, out, ctx, x, r, inverse, out);
}

}  // namespace ops
}  // namespace nfd
