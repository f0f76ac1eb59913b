// Dispatcher for ops::upsample_nearest2x (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void upsample_nearest2x(const Context& ctx, const Tensor& x, Tensor& out) {
  if (out.device == Device::cpu) return cpu::upsample_nearest2x(ctx, x, out);
#ifdef NFD_RT_WITH_CUDA
  return cuda::upsample_nearest2x(ctx, x, out);
#else
  fail(ErrorKind::unsupported, "ops::upsample_nearest2x: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
