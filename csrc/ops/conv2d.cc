// ops::conv2d: out[Cout, Ho, Wo] = conv2d(x[Cin, H, W], w[Cout, Cin, k, k], bias; stride, pad) (+ residual),
// then the activation `act` (math in ops/ops.h). The contract is checked here; the backends only compute.
#include <string>

#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void conv2d(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int pad,
            Tensor& out, const Tensor* residual, Activation act) {
  const Contract c("conv2d");
  c.defined({{"x", x}, {"w", w}, {"out", out}});
  c.shape({"w", w}, {-1, -1, -1, -1}, "Cout, Cin, k, k");
  const int64_t Cout = w.dim(0), Cin = w.dim(1), k = w.dim(2);
  c.shape({"w", w}, {Cout, Cin, k, k}, "Cout, Cin, k, k");  // square kernels only
  c.shape({"x", x}, {Cin, -1, -1}, "Cin, H, W");
  c.check(stride >= 1 && pad >= 0,
          "stride must be >= 1 and pad >= 0, got stride " + std::to_string(stride) + ", pad " + std::to_string(pad));
  const int64_t Ho = (x.dim(1) + 2 * pad - k) / stride + 1, Wo = (x.dim(2) + 2 * pad - k) / stride + 1;
  c.check(x.dim(1) + 2 * pad >= k && x.dim(2) + 2 * pad >= k,
          "x " + x.describe() + " (padded by " + std::to_string(pad) + ") is smaller than the kernel " + w.describe());
  c.shape({"out", out}, {Cout, Ho, Wo}, "Cout, Ho, Wo");
  if (bias.defined()) c.shape({"bias", bias}, {Cout}, "Cout");
  const Tensor none;
  const Tensor& res = residual ? *residual : none;
  if (res.defined()) c.same_shape({"residual", res}, {"out", out});
  c.float_operands({{"out", out}, {"x", x}, {"w", w}, {"bias", bias}, {"residual", res}});
  c.disjoint({"x", x}, {"out", out});
  c.disjoint({"w", w}, {"out", out});
  c.disjoint({"bias", bias}, {"out", out});
  c.disjoint({"residual", res}, {"out", out});
  NFD_DISPATCH(conv2d, out, ctx, x, w, bias, stride, pad, out, residual, act);
}

}  // namespace ops
}  // namespace nfd
