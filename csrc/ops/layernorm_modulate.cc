// Dispatcher for ops::layernorm_modulate (math in ops/ops.h): runs the backend of the output tensor's device.
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out) {
  NFD_DISPATCH(layernorm_modulate, out, ctx, x, shift, scale, eps, out);
}

}  // namespace ops
}  // namespace nfd
