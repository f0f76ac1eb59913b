// ops::upsample2x_conv2d: out[Cout, 2H, 2W] = conv2d(upsample_nearest2x(x[Cin, H, W]), w[Cout, Cin, 3, 3], bias;
// stride 1, pad 1) (math in ops/ops.h). The contract is checked here; the backends only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void upsample2x_conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  const Contract c("upsample2x_conv2d");
  c.defined({{"x", x}, {"w", w}, {"out", out}});
  c.shape({"w", w}, {-1, -1, 3, 3}, "Cout, Cin, 3, 3");
  const int64_t Cout = w.dim(0), Cin = w.dim(1);
  c.shape({"x", x}, {Cin, -1, -1}, "Cin, H, W");
  c.shape({"out", out}, {Cout, 2 * x.dim(1), 2 * x.dim(2)}, "Cout, 2H, 2W");
  if (bias.defined()) c.shape({"bias", bias}, {Cout}, "Cout");
  c.float_operands({{"out", out}, {"x", x}, {"w", w}, {"bias", bias}});
  c.disjoint({"x", x}, {"out", out});
  c.disjoint({"w", w}, {"out", out});
  c.disjoint({"bias", bias}, {"out", out});
  NFD_DISPATCH(upsample2x_conv2d, out, ctx, x, w, bias, out);
}

}  // namespace ops
}  // namespace nfd
