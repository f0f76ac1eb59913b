// ops::upsample_nearest2x: out[C, 2H, 2W] = x[C, H, W] repeated 2x2 (math in ops/ops.h). The contract is
// checked here; the backends only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out) {
  const Contract c("upsample_nearest2x");
  c.defined({{"x", x}, {"out", out}});
  c.shape({"x", x}, {-1, -1, -1}, "C, H, W");
  c.shape({"out", out}, {x.dim(0), 2 * x.dim(1), 2 * x.dim(2)}, "C, 2H, 2W");
  c.float_operands({{"out", out}, {"x", x}});
  c.disjoint({"x", x}, {"out", out});
  NFD_DISPATCH(upsample_nearest2x, out, ctx, x, out);
}

}  // namespace ops
}  // namespace nfd
