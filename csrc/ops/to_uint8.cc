// Dispatcher for ops::to_uint8 (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void to_uint8(const Context& ctx, const Tensor& image, Tensor& out) {
  if (out.device == Device::cpu) return cpu::to_uint8(ctx, image, out);
#ifdef NFD_RT_WITH_CUDA
  return cuda::to_uint8(ctx, image, out);
#else
  fail(ErrorKind::unsupported, "ops::to_uint8: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
