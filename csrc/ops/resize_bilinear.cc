// ops::resize_bilinear: out[C, Ho, Wo] = bilinear resize of x[C, H, W] (align_corners false, no antialias, as
// F.interpolate(mode="bilinear"); math in ops/ops.h). The contract is checked here; the backends only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void resize_bilinear(const Context& ctx, const Tensor& x, Tensor& out) {
  const Contract c("resize_bilinear");
  c.defined({{"x", x}, {"out", out}});
  c.shape({"x", x}, {-1, -1, -1}, "C, H, W");
  c.shape({"out", out}, {x.dim(0), -1, -1}, "C, Ho, Wo");
  c.check(x.dim(1) >= 1 && x.dim(2) >= 1 && out.dim(1) >= 1 && out.dim(2) >= 1,
          "x and out need at least one row and column, got x " + x.describe() + ", out " + out.describe());
  c.float_operands({{"out", out}, {"x", x}});
  c.disjoint({"x", x}, {"out", out});
  NFD_DISPATCH(resize_bilinear, out, ctx, x, out);
}

}  // namespace ops
}  // namespace nfd
