// ops::gated_add_layernorm_modulate: y[M, D] += gate[D] * x[M, D], then out = Norm(y) * (1 + scale) + shift
// (math in ops/ops.h): the gated residual of a DiT branch folded into the layernorm after it. The contract is
// checked here; the backends only compute.
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void gated_add_layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y,
                                  const Tensor& shift, const Tensor& scale, float eps, Tensor& out, Norm norm) {
  const Contract c("gated_add_layernorm_modulate");
  c.defined({{"x", x}, {"gate", gate}, {"y", y}, {"shift", shift}, {"scale", scale}, {"out", out}});
  c.shape({"y", y}, {-1, -1}, "M, D");
  const int64_t D = y.dim(1);
  c.same_shape({"x", x}, {"y", y});
  c.shape({"gate", gate}, {D}, "D");
  c.shape({"shift", shift}, {D}, "D");
  c.shape({"scale", scale}, {D}, "D");
  c.same_shape({"out", out}, {"y", y});
  c.float_operands({{"out", out}, {"x", x}, {"gate", gate}, {"y", y}, {"shift", shift}, {"scale", scale}});
  // y is written, then read by the norm: it must not alias any other operand; out neither.
  c.disjoint({"x", x}, {"y", y});
  c.disjoint({"gate", gate}, {"y", y});
  c.disjoint({"shift", shift}, {"y", y});
  c.disjoint({"scale", scale}, {"y", y});
  c.disjoint({"y", y}, {"out", out});
  c.disjoint({"x", x}, {"out", out});
  c.disjoint({"gate", gate}, {"out", out});
  c.disjoint({"shift", shift}, {"out", out});
  c.disjoint({"scale", scale}, {"out", out});
  NFD_DISPATCH(gated_add_layernorm_modulate, out, ctx, x, gate, y, shift, scale, eps, out, norm);
}

}  // namespace ops
}  // namespace nfd
