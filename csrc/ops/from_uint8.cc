// Dispatcher for ops::from_uint8 (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void from_uint8(const Context& ctx, const Tensor& frame, Tensor& image) {
  if (image.device == Device::cpu) return cpu::from_uint8(ctx, frame, image);
#ifdef NFD_RT_WITH_CUDA
  return cuda::from_uint8(ctx, frame, image);
#else
  fail(ErrorKind::unsupported, "ops::from_uint8: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
