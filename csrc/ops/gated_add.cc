// ops::gated_add: y[M, N] += gate[N] * x[M, N] (the adaLN-Zero gated residual, for a GEMM that ran over several
// sessions' rows at once; one session uses linear's fused gated_residual epilogue). The contract is checked
// here; the backends only compute.
#include <string>

#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void gated_add(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y) {
  const auto where = [](const char* name, const Tensor& t) { return std::string("ops::gated_add: ") + name + " " + t.describe(); };
  NFD_CHECK(x.defined() && gate.defined() && y.defined(), invalid_argument, "ops::gated_add: undefined tensor");
  NFD_CHECK(y.rank() == 2, invalid_argument, where("y must be [M, N], got", y));
  NFD_CHECK(x.shape == y.shape, invalid_argument, where("x must have y's shape, got", x) + " for y " + y.describe());
  NFD_CHECK(gate.rank() == 1 && gate.dim(0) == y.dim(1), invalid_argument, where("gate must be [N], got", gate));
  NFD_CHECK(x.device == y.device && gate.device == y.device, invalid_argument,
            "ops::gated_add: x, gate and y must be on one device");
  NFD_CHECK(x.dtype == y.dtype && gate.dtype == y.dtype, unsupported, "ops::gated_add: x, gate and y must share a dtype");
  NFD_CHECK(x.data != y.data, invalid_argument, "ops::gated_add: x and y must not alias");
  NFD_DISPATCH(gated_add, y, ctx, x, gate, y);
}

}  // namespace ops
}  // namespace nfd
