// ops::layernorm_modulate: out[M, D] = Norm(x[M, D]) * (scale_offset + scale[D]) + shift[D] (math in
// ops/ops.h: scale_offset 1 is adaLN's modulation, 0 a LayerNorm with affine; Norm LayerNorm or RMSNorm). The
// contract is checked here; the backends only compute. Row by row: out may be x itself (in place).
#include "ops/contract.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                        Tensor& out, float scale_offset, Norm norm) {
  const Contract c("layernorm_modulate");
  c.defined({{"x", x}, {"shift", shift}, {"scale", scale}, {"out", out}});
  c.shape({"x", x}, {-1, -1}, "M, D");
  const int64_t D = x.dim(1);
  c.shape({"shift", shift}, {D}, "D");
  c.shape({"scale", scale}, {D}, "D");
  c.same_shape({"out", out}, {"x", x});
  c.float_operands({{"out", out}, {"x", x}, {"shift", shift}, {"scale", scale}});
  c.same_or_disjoint({"x", x}, {"out", out});
  c.disjoint({"shift", shift}, {"out", out});
  c.disjoint({"scale", scale}, {"out", out});
  NFD_DISPATCH(layernorm_modulate, out, ctx, x, shift, scale, eps, out, scale_offset, norm);
}

}  // namespace ops
}  // namespace nfd
