// Dispatcher for ops::groupnorm (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void groupnorm(const Context& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps, bool silu, Tensor& out) {
  if (out.device == Device::cpu) return cpu::groupnorm(ctx, x, gamma, beta, groups, eps, silu, out);
#ifdef NFD_RT_WITH_CUDA
  return cuda::groupnorm(ctx, x, gamma, beta, groups, eps, silu, out);
#else
  fail(ErrorKind::unsupported, "ops::groupnorm: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
