// Dispatcher for ops::layernorm_modulate (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void layernorm_modulate(const Context& ctx, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out) {
  if (out.device == Device::cpu) return cpu::layernorm_modulate(ctx, x, shift, scale, eps, out);
#ifdef NFD_RT_WITH_CUDA
  return cuda::layernorm_modulate(ctx, x, shift, scale, eps, out);
#else
  fail(ErrorKind::unsupported, "ops::layernorm_modulate: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
