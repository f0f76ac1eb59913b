// ops::gated_add: y[M, N] += gate[N] * x[M, N] (the adaLN-Zero gated residual, for a GEMM that ran over several
// sessions' rows at once; one session uses linear's fused gated_residual epilogue). The contract is checked
// here; the backends only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void gated_add(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y) {
  const Contract c("gated_add");
  c.defined({{"x", x}, {"gate", gate}, {"y", y}});
  c.shape({"y", y}, {-1, -1}, "M, N");
  c.same_shape({"x", x}, {"y", y});
  c.shape({"gate", gate}, {y.dim(1)}, "N");
  c.float_operands({{"y", y}, {"x", x}, {"gate", gate}});
  c.disjoint({"x", x}, {"y", y});
  c.disjoint({"gate", gate}, {"y", y});
  NFD_DISPATCH(gated_add, y, ctx, x, gate, y);
}

}  // namespace ops
}  // namespace nfd
