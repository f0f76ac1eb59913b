// Dispatcher for ops::copy (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void copy(const Context& ctx, const Tensor& src, Tensor& dst) {
  // Any copy that touches CUDA memory belongs to the CUDA backend.
  if (src.device == Device::cpu && dst.device == Device::cpu) return cpu::copy(ctx, src, dst);
#ifdef NFD_RT_WITH_CUDA
  return cuda::copy(ctx, src, dst);
#else
  fail(ErrorKind::unsupported, "ops::copy: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
