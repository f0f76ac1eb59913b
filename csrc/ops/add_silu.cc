// Dispatcher for ops::add_silu (math in ops/ops.h): runs the backend of the output tensor's device.
#include "core/error.h"
#include "ops/ops_impl.h"

namespace nfd {
namespace ops {

void add_silu(const Context& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  if (out.device == Device::cpu) return cpu::add_silu(ctx, a, b, out);
#ifdef NFD_RT_WITH_CUDA
  return cuda::add_silu(ctx, a, b, out);
#else
  fail(ErrorKind::unsupported, "ops::add_silu: device cuda requested but nfd_rt was built without CUDA");
#endif
}

}  // namespace ops
}  // namespace nfd
