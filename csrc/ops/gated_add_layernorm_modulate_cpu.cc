// ops::gated_add_layernorm_modulate on the CPU (contract checked in ops/gated_add_layernorm_modulate.cc): the two
// ops it folds, one after the other. On the CPU the fold saves nothing worth its code (the rows stay in cache),
// and composing them keeps the result bit for bit that of the separate ops.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {
namespace cpu {

void gated_add_layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& gate, Tensor& y,
                                  const Tensor& shift, const Tensor& scale, float eps, Tensor& out, Norm norm) {
  cpu::gated_add(ctx, x, gate, y);
  cpu::layernorm_modulate(ctx, y, shift, scale, eps, out, 1.f, norm);
}

}  // namespace cpu
}  // namespace ops
}  // namespace nfd
